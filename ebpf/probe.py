"""Feature checks: real, memoised probes of what the eBPF engine needs (architecture §4)."""
from __future__ import annotations

import os
import platform
import tempfile
from functools import lru_cache

from . import libbpf
from .catalogue import (ATTACH_TYPE_NAMES, PROG_CGROUP_SOCK_ADDR, PROG_CGROUP_SOCKOPT,
                        PROG_TYPE_NAMES, PROGRAMS)
from .cgroup import cgroup2_mount, is_cgroup2_dir
from .compile import compile_for_check, find_kernel_headers
from .errors import EbpfCompileError, HeadersNotFound
from .settings import DEFAULT_SOURCE_PATH
from .pins import is_bpffs, mount_bpffs, umount
from engine.choice import CGROUP2_FIX, KERNEL_FIX, MIN_EBPF_KERNEL as MIN_KERNEL
from engine.choice import Check  # one Check type for the pipeline and these probes
from engine.probe import kernel_version


def check_kernel() -> Check:
    rel = platform.release()
    ok = kernel_version(rel) >= MIN_KERNEL
    return Check("kernel", ok, f"kernel {rel} (need >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]})",
                 "" if ok else KERNEL_FIX)


def check_cgroup2(path: str | None) -> Check:
    mount = cgroup2_mount()
    if mount is None:
        return Check("cgroup2", False, "no cgroup2 mount in /proc/self/mountinfo", CGROUP2_FIX)
    path = path or mount
    ok = is_cgroup2_dir(path)
    return Check("cgroup2", ok, f"{path} {'is' if ok else 'is not'} a cgroup2 directory "
                 f"(cgroup2 mounted at {mount})", "" if ok else f"use --ebpf-cgroup-path {mount}")


@lru_cache(maxsize=8)
def check_bpffs(path: str | None) -> Check:
    if path and is_bpffs(path):
        return Check("bpffs", True, f"bpffs mounted at {path}", "")
    with tempfile.TemporaryDirectory(prefix="tpctl-bpffs-probe-") as tmp:
        try:
            mount_bpffs(tmp)
            umount(tmp)
        except OSError as exc:
            return Check("bpffs", False, f"cannot mount bpffs: {exc}",
                         "run as root with CAP_SYS_ADMIN, or mount bpffs yourself")
    return Check("bpffs", True, f"bpffs mountable{f' at {path}' if path else ''}", "")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return Check("bcc", False, f"bcc not importable: {exc}",
                     "apt-get install python3-bpfcc (and use a venv with --system-site-packages)")
    if not libbpf.available():
        return Check("bcc", False, "libbcc.so.0 lacks the libbpf symbols we need",
                     "install BCC >= 0.18")
    return Check("bcc", True, "bcc importable", "")


def check_headers() -> Check:
    try:
        h = find_kernel_headers()
    except HeadersNotFound as exc:
        return Check("kernel-headers", False, str(exc),
                     "apt-get install linux-headers-$(dpkg --print-architecture)")
    return Check("kernel-headers", True, f"headers at {h.source_dir} ({h.how})", "")


@lru_cache(maxsize=1)
def check_program_types() -> tuple[Check, ...]:
    out = []
    seen = set()
    for prog in PROGRAMS:
        # only sock_addr and sockopt programs are verified for one expected attach type
        eat = prog.attach_type if prog.prog_type in (PROG_CGROUP_SOCK_ADDR, PROG_CGROUP_SOCKOPT) else 0
        key = (prog.prog_type, eat)
        if key in seen:
            continue
        seen.add(key)
        err = libbpf.probe_prog_load(prog.prog_type, eat)
        what = PROG_TYPE_NAMES[prog.prog_type] + (f"/{ATTACH_TYPE_NAMES[eat]}" if eat else "")
        detail = f"{what} for {prog.name}: " + ("loads" if not err else os.strerror(err))
        fix = "" if not err else ("kernel >= 5.8 for getpeername hooks" if prog.optional
                                  else "a kernel with this program type (CONFIG_BPF, CONFIG_CGROUP_BPF)")
        out.append(Check(f"prog:{prog.name}", not err, detail, fix, required=not prog.optional))
    return tuple(out)


def check_compile(source_dir: str) -> Check:
    """Compile the real programs: headers can be present and still be ones this BCC cannot
    digest (6.12's internal headers with BCC 0.26, bcc#5231). The object is kept for install."""
    try:
        compile_for_check(source_dir)
    except (EbpfCompileError, HeadersNotFound) as exc:
        text = str(exc)
        first = next((ln.strip() for ln in text.splitlines() if "error:" in ln), text.splitlines()[0])
        return Check("compile", False, f"BCC cannot compile {source_dir}: {first}",
                     "install BCC and kernel headers that match (linux-headers-$(uname -r)), "
                     "or use the iptables engine")
    return Check("compile", True, f"{source_dir} compiles against these headers", "")


def feature_checks(settings=None) -> list:
    cg = getattr(settings, "cgroup_path", None)
    bpffs = getattr(settings, "bpffs_path", None)
    source = getattr(settings, "programs_source_path", None) or DEFAULT_SOURCE_PATH
    bcc, headers = check_bcc(), check_headers()
    checks = [check_kernel(), check_cgroup2(cg), check_bpffs(bpffs), bcc, headers]
    if os.geteuid() == 0:
        checks.extend(check_program_types())
        if bcc.ok and headers.ok:  # without either, a compile would only repeat their failure
            checks.append(check_compile(source))
    else:
        checks.append(Check("prog-types", False, "program type probes need root", "run as root"))
    return checks
