"""What the eBPF engine needs of a host before anything is probed: one text per check, shared by
the pure choice (HostFacts alone) and the feature checks (ebpf/probe.py)."""
from __future__ import annotations

import os

from engine.contract import Check, kernel_version

MIN_KERNEL = (5, 7)
KERNEL_FIX = "boot a kernel >= 5.7, or use the iptables engine"
CGROUP2_FIX = "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified"


def kernel_check(release: str) -> Check:
    ok = kernel_version(release) >= MIN_KERNEL
    return Check("kernel", ok, f"kernel {release} (the eBPF engine needs >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]})",
                 "" if ok else KERNEL_FIX)


def cgroup2_check(mount: str | None, path: str | None = None) -> Check:
    """cgroup2 is mounted (HostFacts.cgroup2_mount) and `path`, when given, is inside it."""
    if mount is None:
        return Check("cgroup2", False, "no cgroup2 mount in /proc/self/mountinfo", CGROUP2_FIX)
    if path is None:
        return Check("cgroup2", True, f"cgroup2 mounted at {mount}")
    ok = is_cgroup2_dir(path, mount)
    return Check("cgroup2", ok, f"{path} {'is' if ok else 'is not'} a cgroup2 directory "
                 f"(cgroup2 mounted at {mount})", "" if ok else f"use --ebpf-cgroup-path {mount}")


def is_cgroup2_dir(path: str, mount: str) -> bool:
    """True when path is a directory inside the cgroup2 hierarchy mounted at `mount`."""
    if not os.path.isdir(path):
        return False
    real = os.path.realpath(path)
    return (real == mount or real.startswith(mount.rstrip("/") + "/")) and \
        os.path.exists(os.path.join(real, "cgroup.procs"))
