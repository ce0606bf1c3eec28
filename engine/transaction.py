"""The one transaction every install runs in: steps, each with its undo (as pyroute2's ndb).

Steps run in order. When anything fails, Ctrl-C and SIGTERM included, the steps already done
are undone in reverse order; a failure raises ApplyFailed with the original error and what the
rollback did, an interrupt is re-raised once the host is back as it was. An undo that fails too
is reported, not hidden.

SIGINT, SIGTERM and SIGHUP (a closed terminal or ssh session) that arrive while a step runs
are held until the step has recorded its undo: otherwise a signal between "the kernel made the
object" and "the undo is recorded" would leave the object behind. They are held during the
rollback too. A held signal cuts a retry's pause short (pause()): the install stops retrying,
rolls back and exits 128 + the signal.

Two hooks let the tests prove it, named by step:
  TPCTL_FAULT_INJECT=<step>          fail right after the step
  TPCTL_SIGNAL_IN_STEP=<step>:<INT|TERM|HUP>   send this process the signal inside the step, after
                                     its work and before its undo is recorded (the worst moment)
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from engine.errors import ApplyFailed

FAULT_ENV = "TPCTL_FAULT_INJECT"
SIGNAL_ENV = "TPCTL_SIGNAL_IN_STEP"
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PAUSE_SLICE = 0.05  # how soon a held signal ends a retry's pause
_stop_asked = False  # a signal is held: retries stop (a flag, not an Event: handlers must not take locks)

Log = Callable[[str], None]


class InjectedFault(RuntimeError):
    """Raised right after the step named in TPCTL_FAULT_INJECT."""


class Terminated(SystemExit):
    """SIGTERM or SIGHUP as an exception, so that the transaction rolls back before the process
    ends (with 128 + the signal, as the shell reports a process the signal killed)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@dataclass
class Step:
    name: str
    do: Callable[[], object]
    undo: Callable[[], object]


class Transaction:
    """Done steps and their undos. Use it through transaction(); engines call step()."""

    def __init__(self, log: Log = lambda _m: None, journal: Callable[[str], None] | None = None) -> None:
        self.log = log
        self._journal = journal  # writes what the install is about to make, durably (engine/journal.py)
        self.done: list[str] = []
        self.current: str | None = None  # the step running or last started: named in failures
        self._undos: list[tuple[str, Callable[[], Any]]] = []
        self._held: list[int] = []
        self._holding = False
        self._at_end: list[Callable[[], Any]] = []
        self.commit_actions: list[Callable[[], Any]] = []  # run by the caller once the result is kept
        self.rolled_back_cleanly = False  # set by transaction() after a rollback
        _ask_to_stop(False)

    def intend(self) -> None:
        """Write the journal now: the caller has recorded the object it is about to make. Every
        step also does this before it runs; a step that learns what it will make only inside
        (an iptables apply: the rules and tables it adds) calls it right before the kernel call."""
        if self._journal is not None:
            self._journal(self.current or "")

    def at_end(self, action: Callable[[], Any]) -> None:
        """Run action when the transaction ends, kept or rolled back (e.g. close fds undos need)."""
        self._at_end.append(action)

    def at_commit(self, action: Callable[[], Any]) -> None:
        """Work that cannot be undone and changes no traffic (e.g. unpinning programs already
        detached by an undoable step): the caller runs it once the install is committed."""
        self.commit_actions.append(action)

    def step(self, name: str, do: Callable[[], Any], undo: Callable[[Any], Any] | None = None) -> Any:
        """Run do(); record undo(result) before a held signal may end the install."""
        self.log(f"step: {name}")
        self.current = name
        self.intend()
        self._holding = True
        try:
            result = do()
            if undo is not None:
                self._undos.append((name, lambda: undo(result)))
            self.done.append(name)
            signal_point(name)
        finally:
            self._holding = False
        self._deliver_held()
        if os.environ.get(FAULT_ENV) == name:
            raise InjectedFault(f"fault injected after step {name!r} ({FAULT_ENV})")
        return result

    def run(self, steps: list[Step]) -> None:
        for s in steps:
            self.step(s.name, s.do, _ignoring_result(s.undo))

    def rollback(self) -> list[str]:
        """Undo every done step, newest first; return what each undo did."""
        notes = []
        self._holding = True
        try:
            while self._undos:
                name, undo = self._undos.pop()
                self.log(f"undo: {name}")
                try:
                    undo()
                    notes.append(f"undid {name}")
                except Exception as err:  # keep undoing the rest; report it
                    notes.append(f"undo of {name!r} failed: {err}")
        finally:
            self._holding = False
        return notes

    # signals: held while a step or the rollback runs, delivered between steps
    def _on_signal(self, signum: int, _frame) -> None:
        if self._holding:
            self._held.append(signum)
            _ask_to_stop(True)
        else:
            _raise_for(signum)

    def _deliver_held(self) -> None:
        if self._held:
            signum = self._held[0]
            self._held.clear()
            _raise_for(signum)


def _ignoring_result(undo: Callable[[], object]) -> Callable[[Any], object]:
    return lambda _result: undo()


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt()
    raise Terminated(signum)


def _ask_to_stop(asked: bool) -> None:
    global _stop_asked
    _stop_asked = asked


def pause(seconds: float) -> bool:
    """Sleep `seconds` (a retry's pause); False at once when a signal is held for the running
    transaction: retrying would only delay the rollback the signal asked for."""
    deadline = time.monotonic() + seconds
    while not _stop_asked:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, PAUSE_SLICE))
    return False


def signal_point(name: str) -> None:
    """TPCTL_SIGNAL_IN_STEP names this point (a step, or uninstall's uninstall:<engine>): signal."""
    wanted, _, which = os.environ.get(SIGNAL_ENV, "").rpartition(":")
    if wanted == name:
        os.kill(os.getpid(), getattr(signal, f"SIG{which}"))


@contextlib.contextmanager
def _signals_to(tx: Transaction) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can take signals: nothing to hold
        return
    # a signal the caller ignores (nohup, a service manager) stays ignored: it asked for no interrupt
    previous = {s: signal.signal(s, tx._on_signal) for s in HELD_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _apply_failed(message: str, _notes: list[str]) -> Exception:
    return ApplyFailed(message)


@contextlib.contextmanager
def transaction(log: Log = lambda _m: None, what: str = "install",
                error: Callable[[str, list[str]], Exception] = _apply_failed,
                journal: Callable[[str], None] | None = None) -> Iterator[Transaction]:
    """All or nothing: the body's steps stay only if the body ends normally. A failure raises
    error(message, rollback notes) (ApplyFailed: exit 4). `journal(step)` is called before each
    step and at each tx.intend()."""
    tx = Transaction(log, journal)
    with _signals_to(tx):
        try:
            yield tx
        except BaseException as err:  # every failure, Ctrl-C and SIGTERM included, rolls back
            notes = tx.rollback()
            tx.rolled_back_cleanly = all(n.startswith("undid ") for n in notes)
            if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: rolled back, go on
                raise
            tx._deliver_held()  # interrupted during the rollback: stop as asked, the host is restored
            raise error(failure_message(what, tx, err, notes), notes) from err
        finally:
            for action in tx._at_end:
                action()


def failure_message(what: str, tx: Transaction, err: BaseException, notes: list[str]) -> str:
    rolled = [n.removeprefix("undid ") for n in notes if n.startswith("undid ")]
    problems = [n for n in notes if not n.startswith("undid ")]
    where = f" at step {tx.current!r}" if tx.current else " before its first step"
    message = f"{what} failed{where}: {err}"
    message += "; rolled back " + (", ".join(rolled) or "nothing (no step had completed)")
    if problems:
        message += "; ROLLBACK INCOMPLETE: " + "; ".join(problems)
    return message


def run(steps: list[Step], log: Log = lambda _m: None) -> list[str]:
    """Run steps as one transaction; return the names of the steps done."""
    with transaction(log) as tx:
        tx.run(steps)
    return tx.done
