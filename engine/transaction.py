"""A transaction of steps, each with its undo (as pyroute2's ndb transactions).

Steps run in order. When one fails, the steps already done are undone in reverse order and
ApplyFailed is raised with the original error; an undo that fails too is reported, not hidden.
A fault can be injected after any named step with TPCTL_FAULT_INJECT=<step name>, which is
how the tests prove that a failure half-way leaves the host as it was.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from engine.errors import ApplyFailed

FAULT_ENV = "TPCTL_FAULT_INJECT"


class InjectedFault(RuntimeError):
    pass


@dataclass
class Step:
    name: str
    do: Callable[[], object]
    undo: Callable[[], object]


def run(steps: list[Step], log: Callable[[str], None] = lambda _: None) -> list[str]:
    """Run every step; return the names of the steps done. On failure roll back and raise."""
    done: list[Step] = []
    fault = os.environ.get(FAULT_ENV)
    try:
        for step in steps:
            log(f"step: {step.name}")
            step.do()
            done.append(step)
            if fault == step.name:
                raise InjectedFault(f"fault injected after step {step.name!r} ({FAULT_ENV})")
    except BaseException as err:  # every failure, Ctrl-C included, must roll back
        problems = []
        for step in reversed(done):
            log(f"undo: {step.name}")
            try:
                step.undo()
            except Exception as undo_err:  # keep undoing the rest; report it below
                problems.append(f"undo of {step.name!r} failed: {undo_err}")
        message = f"install failed at step {_failed_step(steps, done)!r}: {err}"
        message += "; rolled back " + (", ".join(s.name for s in reversed(done)) or "nothing (no step had completed)")
        if problems:
            message += "; ROLLBACK INCOMPLETE: " + "; ".join(problems)
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: rolled back, now go on
            raise
        raise ApplyFailed(message) from err
    return [s.name for s in done]


def _failed_step(steps: list[Step], done: list[Step]) -> str:
    if len(done) < len(steps) and (not done or done[-1].name != os.environ.get(FAULT_ENV)):
        return steps[len(done)].name
    return done[-1].name if done else steps[0].name
