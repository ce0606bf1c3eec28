"""apply as a transaction: every step records its undo; a failure undoes the done steps in
reverse and reports the original error with what the rollback did (pyroute2 ndb style)."""
from __future__ import annotations

import os
from typing import Any, Callable

from .errors import EbpfApplyError, InjectedFault

FAULT_ENV = "TPCTL_FAULT_INJECT"


class Transaction:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self.done: list[str] = []

    def step(self, name: str, do: Callable[[], Any],
             undo: Callable[[Any], Any] | None = None) -> Any:
        try:
            result = do()
        except Exception as exc:
            raise _StepFailed(name, exc) from exc
        if undo is not None:
            self._undo.append((name, lambda: undo(result)))
        self.done.append(name)
        if os.environ.get(FAULT_ENV) == name:
            raise _StepFailed(name, InjectedFault(f"fault injected after step {name}"))
        return result

    def rollback(self) -> list[str]:
        notes = []
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
                notes.append(f"undid {name}")
            except Exception as exc:  # keep undoing the rest; report each failure
                notes.append(f"could not undo {name}: {exc}")
        return notes

    def fail(self, exc: BaseException) -> EbpfApplyError:
        notes = self.rollback()
        if isinstance(exc, _StepFailed):
            return EbpfApplyError(f"step {exc.step} failed: {exc.cause}", notes)
        return EbpfApplyError(f"apply failed: {exc}", notes)


class _StepFailed(Exception):
    def __init__(self, step: str, cause: BaseException):
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause
