"""Children run to completion with their wall time and resource usage, and CPU counters.

A child is reaped with os.wait4 so its rusage (CPU time, ru_maxrss = peak resident memory, KiB)
is the child's own; every child has a time limit and is killed through its pidfd when it
overruns or the run is interrupted. The sandbox's argv wrappers (sh -> nsenter -> setpriv -> taskset) all exec, so the
pid reaped is the tool itself.
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from bench import parse

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ChildTimeout(RuntimeError):
    pass


@dataclass(frozen=True)
class Finished:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float          # user + system of the child
    maxrss_kib: int       # peak resident set size of the child


_LIVE: dict[int, Running] = {}  # started and not yet finished, for stop_all()


def start(argv: list[str], env: dict | None = None, stdin_text: str | None = None) -> Running:
    running = Running(argv, env, stdin_text)
    _LIVE[running.pid] = running
    return running


def stop_all() -> None:
    """Kill every child started here that has not finished (on Ctrl-C or an error), by pidfd:
    a client left running would keep the sandbox's namespace and cgroup busy."""
    for running in list(_LIVE.values()):
        running.kill()


class Running:
    """A child started now; finish() waits for it (bounded) and returns a Finished."""

    def __init__(self, argv: list[str], env: dict | None, stdin_text: str | None):
        self.argv = argv
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        stdin = subprocess.DEVNULL
        if stdin_text is not None:
            stdin = tempfile.TemporaryFile()
            stdin.write(stdin_text.encode())
            stdin.seek(0)
        self._started = time.monotonic()
        self._proc = subprocess.Popen(argv, stdout=self._out, stderr=self._err, stdin=stdin, env=env,
                                      start_new_session=True)
        if stdin is not subprocess.DEVNULL:
            stdin.close()
        # a pidfd names this very process even after it is reaped: killing by it can never hit
        # a reused pid
        self._pidfd = os.pidfd_open(self._proc.pid)
        self._status: tuple[int, int, resource.struct_rusage] | None = None
        self._ended = 0.0
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _reap(self) -> None:
        self._status = os.wait4(self._proc.pid, 0)
        self._ended = time.monotonic()

    def kill(self) -> None:
        if self._reaper.is_alive():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            self._reaper.join(10)
        self._proc.returncode = -signal.SIGKILL
        self._close()

    def _close(self) -> None:
        _LIVE.pop(self._proc.pid, None)
        with contextlib.suppress(OSError):
            os.close(self._pidfd)

    def finish(self, timeout: float) -> Finished:
        self._reaper.join(timeout)
        if self._reaper.is_alive():
            self.kill()
            raise ChildTimeout(f"{' '.join(self.argv[-8:])} ran longer than {timeout:.0f}s and was killed")
        self._close()
        _, status, usage = self._status
        self._proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        outputs = []
        for handle in (self._out, self._err):
            handle.seek(0)
            outputs.append(handle.read().decode(errors="replace"))
            handle.close()
        return Finished(self.argv, self._proc.returncode, outputs[0], outputs[1], self._ended - self._started,
                        usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def run(argv: list[str], timeout: float, env: dict | None = None, stdin_text: str | None = None) -> Finished:
    return start(argv, env, stdin_text).finish(timeout)


def system_ticks() -> parse.CpuTicks:
    with open("/proc/stat", encoding="ascii") as handle:
        return parse.proc_stat_cpu(handle.read())


def process_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
        return parse.proc_pid_cpu(handle.read())


def kernel_threads(prefix: str) -> list[int]:
    """Pids of the threads whose name starts with `prefix` (e.g. "ksoftirqd/")."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as handle:
                    if handle.read().startswith(prefix):
                        pids.append(int(entry))
            except OSError:
                continue
    return sorted(pids)


def tcp_memory_pages() -> int:
    with open("/proc/net/sockstat", encoding="ascii") as handle:
        return parse.sockstat_tcp_pages(handle.read())


class PeakSampler:
    """Samples a reading every `interval` seconds in a thread between start() and stop(),
    keeping the highest value (bounded: it stops with the run it watches)."""

    def __init__(self, read, interval: float = 0.1):
        self._read, self._interval = read, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.peak = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            self._stop.wait(self._interval)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak
