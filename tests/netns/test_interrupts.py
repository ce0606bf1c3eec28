"""SIGINT, SIGTERM, SIGHUP and SIGKILL inside each install step: the host ends exactly as before.

The signal is sent by the process to itself inside the step, after the step's kernel call and
before its undo is recorded or the step is marked done (TPCTL_SIGNAL_IN_STEP): the moment a
naive transaction leaks the object. SIGINT, SIGTERM and SIGHUP must roll back in the process
(exit 130, 143, 129); after SIGKILL only the journal is left, and `tpctl uninstall` or the next install must
remove everything. The steps are the ones a verbose install names, so a new step is covered
without editing this file. Compared (tests/netns/host_view.py): every iptables table of both
backends and families, the nft ruleset, cgroup attachments, tc, the bpffs, lo's addresses,
the state files.

CI gives each step one signal, in turn, and compile and the state record all four; `make
chaos` (TPCTL_EVERY_SIGNAL=1) every step all four.
"""
from __future__ import annotations

import os
import re
import signal

import pytest

from tests.netns.conftest import add_foreign_rules, install, install_args
from tests.netns.host_view import host_view

EXIT = {"INT": 130, "TERM": 143, "HUP": 129, "KILL": -signal.SIGKILL}
SIGNALS = ("INT", "TERM", "HUP", "KILL")
EVERY_SIGNAL = bool(os.environ.get("TPCTL_EVERY_SIGNAL"))
ALWAYS_ALL = ("compile", "record the install in the state file")


def steps_of(sandbox, args: list[str]) -> list[str]:
    """The steps a verbose install runs, from its own log; then uninstalled again."""
    result = sandbox.tpctl(*args, "--verbose")
    assert result.returncode == 0, result.stderr
    assert sandbox.tpctl("uninstall").returncode == 0
    return re.findall(r"^step: (.+)$", result.stderr, re.M)


def signal_plan(steps: list[str], every_signal: bool = EVERY_SIGNAL) -> list[tuple[str, str]]:
    """(step, signal) pairs: each step one signal, INT, TERM, HUP and KILL in turn (a step named
    in ALWAYS_ALL, or with every_signal any step, all four); of the many alike load:, pin: and
    map: steps the first and the last."""
    kinds: dict[str, list[str]] = {}
    for step in steps:
        kinds.setdefault(step.split(":")[0], []).append(step)
    chosen = {s for kind, members in kinds.items()
              for s in (members if kind not in ("load", "pin", "map") or len(members) <= 2 else [members[0], members[-1]])}
    plan: list[tuple[str, str]] = []
    for step in (s for s in steps if s in chosen):
        if every_signal or step in ALWAYS_ALL:
            plan += [(step, sig) for sig in SIGNALS]
        else:
            plan.append((step, SIGNALS[len(plan) % len(SIGNALS)]))
    return plan


def interrupted_installs_leave_nothing(sandbox, args: list[str], steps: list[str], reinstall=None) -> list[str]:
    """`reinstall`: puts back the install `args` replaces (after a SIGKILL, recovery removes both)."""
    problems = []
    before = host_view(sandbox)
    kills = 0
    for step, sig in signal_plan(steps):
        result = sandbox.tpctl(*args, env={"TPCTL_SIGNAL_IN_STEP": f"{step}:{sig}"})
        said = result.stderr + result.stdout
        if result.returncode != EXIT[sig] or "Traceback" in said or (sig != "KILL" and "rolled back" not in said):
            problems.append(f"{step} SIG{sig}: exit {result.returncode}: {result.stderr[-300:]}")
        if sig == "KILL":  # only the journal is left: the next install, or uninstall, cleans up
            kills += 1
            if kills % 2 == 0:
                again = sandbox.tpctl(*args)
                wanted = "already installed" if step == "record the install in the state file" else "stopped at step"
                if again.returncode != 0 or wanted not in again.stderr or "Traceback" in again.stderr:
                    problems.append(f"{step} SIGKILL, the next install: exit {again.returncode}: {again.stderr[-400:]}")
            if reinstall is not None:  # a replacing install: the one it replaced is gone too; put it back
                sandbox.tpctl("uninstall")
                reinstall()
            else:
                cleaned = sandbox.tpctl("uninstall")
                if cleaned.returncode != 0 or "Traceback" in cleaned.stderr:
                    problems.append(f"{step} SIGKILL, uninstall: exit {cleaned.returncode}: {cleaned.stderr[-300:]}")
        after = host_view(sandbox)
        if after != before:
            changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            problems.append(f"{step} SIG{sig}: the host changed: {changed}")
            before = after  # report each leak once
    return problems


@pytest.mark.parametrize("engine", ["iptables-nft", "iptables-legacy", "ebpf", "nftables"])
def test_signals_in_any_install_step_leave_the_host_as_before(sandbox, engine):
    add_foreign_rules(sandbox)
    args = install_args(engine, sandbox)
    steps = steps_of(sandbox, args)
    assert "record the install in the state file" in steps and len(steps) >= 3, steps
    if engine == "ebpf":
        assert {"compile", "tc:qdisc", "attach:tp_sock4_connect", "meta"} <= set(steps), steps
    problems = interrupted_installs_leave_nothing(sandbox, args, steps)
    assert not problems, "\n".join(problems)


def test_an_interrupted_replacing_install_puts_the_previous_rules_back(sandbox):
    """Replacing an install: each table is swapped (the previous rules out, the new in) in one
    undoable step of the same transaction, so an interrupt at any of them (or later) leaves the
    previous install running."""
    install(sandbox, "iptables-nft")
    args = install_args("iptables-nft", sandbox, "--exclude-outbound-ports", "9001")
    result = sandbox.tpctl(*args, "--verbose")
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"^step: (.+)$", result.stderr, re.M)
    assert "iptables-nft IPv4 nat" in steps and not any(s.startswith("remove previous") for s in steps), steps
    install(sandbox, "iptables-nft")  # back to the first configuration, which the interrupts must keep
    problems = interrupted_installs_leave_nothing(sandbox, args, steps, lambda: install(sandbox, "iptables-nft"))
    assert not problems, "\n".join(problems)


def test_the_signal_plan_gives_every_chosen_step_a_signal_and_every_signal_steps():
    steps = ["add ::6", "mount-bpffs", "compile", *[f"load:p{i}" for i in range(5)], *[f"pin:m{i}" for i in range(9)],
             "attach:a", "attach:b", "tc:qdisc", "record the install in the state file"]
    plan = signal_plan(steps, every_signal=False)
    assert {s for s, _ in plan} == set(steps) - {"load:p1", "load:p2", "load:p3", "pin:m1", "pin:m2", "pin:m3",
                                                 "pin:m4", "pin:m5", "pin:m6", "pin:m7"}
    assert {sig for s, sig in plan if s == "compile"} == set(SIGNALS)
    assert {sig for _, sig in plan if _ not in ALWAYS_ALL} == set(SIGNALS)
    assert len(signal_plan(steps, every_signal=True)) == len(SIGNALS) * len({s for s, _ in plan})
