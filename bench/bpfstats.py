"""What the eBPF engine's programs themselves cost: run count and run time per program.

The kernel counts `run_cnt` and `run_time_ns` of every BPF program only while BPF statistics
are on. They are turned on here with the bpf(2) command BPF_ENABLE_STATS (Linux 5.8+): the
statistics stay on while the returned fd is open, and the kernel turns them off again when it
is closed, which also happens when this process dies (even by SIGKILL). The sysctl
kernel.bpf_stats_enabled is never written, so there is no host value to restore and another
user's setting of it is never overwritten (it keeps reading what was written to it: the kernel
counts the sysctl and the fds separately on one static key). The switch is host-global: while
it is on, every BPF program on the host pays two clock reads per run, so it is on only for
the eBPF cases' slots (`enabled()`).

The programs are read from the sandbox's pins (<bpffs>/tpctl/prog_*) with BPF_OBJ_GET_INFO_BY_FD
into a buffer large enough for `run_time_ns` and `run_cnt` (ebpf/libbpf.prog_info reads only up
to `name`). The parsing and the per-unit arithmetic are pure.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass

PROG_PREFIX = "prog_"           # ebpf/engine.py pins each program as <pin dir>/prog_<name>
SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
# struct bpf_prog_info (include/uapi/linux/bpf.h): id at 4, name[16] at 64, run_time_ns at 192,
# run_cnt at 200; 232 bytes in Linux 6.x. The kernel fills min(our size, its size) and says how
# much it filled in info_len: a kernel older than the counters (5.1) fills less than 208.
INFO_SIZE = 232
_OFF_ID, _OFF_NAME, _OFF_RUN_TIME, _OFF_RUN_CNT = 4, 64, 192, 200
_NEEDED = _OFF_RUN_CNT + 8


@dataclass(frozen=True)
class ProgCounters:
    id: int
    name: str
    run_cnt: int
    run_time_ns: int


def parse_prog_info(buf: bytes, filled: int) -> ProgCounters:
    """The counters out of a struct bpf_prog_info the kernel filled `filled` bytes of."""
    if filled < _NEEDED or len(buf) < _NEEDED:
        raise ValueError(f"bpf_prog_info of {filled} bytes has no run_cnt/run_time_ns (kernel older than 5.1)")
    name = buf[_OFF_NAME:_OFF_NAME + 16].split(b"\0", 1)[0].decode(errors="replace")
    (prog_id,) = struct.unpack_from("=I", buf, _OFF_ID)
    run_time_ns, run_cnt = struct.unpack_from("=QQ", buf, _OFF_RUN_TIME)
    return ProgCounters(prog_id, name, run_cnt, run_time_ns)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    """The bpf(2) syscall; returns its result or raises OSError."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno_mod.ENOSYS, f"bpf(2) syscall number unknown on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno() or errno_mod.EIO
        raise OSError(err, os.strerror(err))
    return int(ret)


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): an fd; the statistics are on while it is open."""
    attr = ctypes.create_string_buffer(struct.pack("=I", _BPF_STATS_RUN_TIME), 16)
    try:
        return _bpf(_BPF_ENABLE_STATS, attr)
    except OSError as err:
        raise OSError(err.errno, f"BPF_ENABLE_STATS: {err.strerror}") from None


def prog_counters(fd: int) -> ProgCounters:
    info = ctypes.create_string_buffer(INFO_SIZE)
    attr = ctypes.create_string_buffer(struct.pack("=IIQ", fd, INFO_SIZE, ctypes.addressof(info)), 16)
    try:
        _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
    except OSError as err:
        raise OSError(err.errno, f"BPF_OBJ_GET_INFO_BY_FD: {err.strerror}") from None
    (filled,) = struct.unpack_from("=I", attr.raw, 4)
    return parse_prog_info(info.raw, filled)


def sysctl_value() -> str | None:
    try:
        with open(SYSCTL, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


@contextlib.contextmanager
def enabled() -> Iterator[str | None]:
    """BPF statistics on for the block; yields None, or why they could not be turned on (the
    block then runs without them). The fd is closed in `finally`, so an error or Ctrl-C in the
    block turns them off as well; a killed process has its fd closed by the kernel."""
    try:
        fd: int | None = enable_stats()
        problem = None
    except OSError as err:
        fd, problem = None, str(err)
    try:
        yield problem
    finally:
        if fd is not None:
            os.close(fd)


def read(pin_dir: str) -> dict[str, tuple[int, int]]:
    """{program: (run_cnt, run_time_ns)} of every program pinned in `pin_dir` now."""
    from ebpf import libbpf  # the pins are opened with the project's own helper

    out = {}
    for entry in sorted(os.listdir(pin_dir)):
        if not entry.startswith(PROG_PREFIX):
            continue
        fd = libbpf.obj_get(os.path.join(pin_dir, entry))
        try:
            counters = prog_counters(fd)
        finally:
            os.close(fd)
        out[entry[len(PROG_PREFIX):]] = (counters.run_cnt, counters.run_time_ns)
    return out


def delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """{program: {"runs": .., "ns": ..}} between two readings of the same install (a program
    missing from either reading is left out: it was not there for the whole run)."""
    return {name: {"runs": after[name][0] - before[name][0], "ns": after[name][1] - before[name][1]}
            for name in after if name in before}


@contextlib.contextmanager
def counted(pin_dir: str, into: dict, key: str) -> Iterator[dict]:
    """Read the counters around the block: into[key] = {"progs": delta}; the block adds "units"
    (connections or requests served) to the dict it is given."""
    record: dict = {}
    before = read(pin_dir)
    yield record
    record["progs"] = delta(before, read(pin_dir))
    into[key] = record


def per_unit(samples: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per-round samples [{"units": n, "progs": {prog: {"runs", "ns"}}}] -> {prog: {"runs":
    [per unit, per round], "ns": [...]}}, with an "all programs" entry summing them."""
    out: dict[str, dict[str, list[float]]] = {}
    for sample in samples:
        units = sample.get("units") or 0
        progs = sample.get("progs") or {}
        if units <= 0 or not progs:
            continue
        total = {"runs": sum(p["runs"] for p in progs.values()), "ns": sum(p["ns"] for p in progs.values())}
        for name, figures in [*sorted(progs.items()), (ALL, total)]:
            entry = out.setdefault(name, {"runs": [], "ns": []})
            entry["runs"].append(figures["runs"] / units)
            entry["ns"].append(figures["ns"] / units)
    return out


ALL = "all programs"


def ns_per_run(samples: list[dict]) -> dict[str, float | None]:
    """Mean run time of each program over every sample (None where it never ran)."""
    runs: dict[str, int] = {}
    ns: dict[str, int] = {}
    for sample in samples:
        for name, figures in (sample.get("progs") or {}).items():
            runs[name] = runs.get(name, 0) + figures["runs"]
            ns[name] = ns.get(name, 0) + figures["ns"]
    return {name: (ns[name] / runs[name] if runs[name] else None) for name in runs}
