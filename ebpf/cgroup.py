"""cgroup2 attachments (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI, so programs of others on the
same cgroup are neither replaced nor blocked) and their discovery by query."""
from __future__ import annotations

import contextlib
import os

from engine.contract import mounts_of_type

from . import libbpf


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The cgroup2 mount point (hybrid hosts: /sys/fs/cgroup/unified)."""
    return next(iter(mounts_of_type("cgroup2", mountinfo)), None)


@contextlib.contextmanager
def cgroup_fd(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def attach(prog_fd: int, cgroup_path: str, attach_type: int) -> None:
    with cgroup_fd(cgroup_path) as fd:
        libbpf.prog_attach(prog_fd, fd, attach_type, libbpf.BPF_F_ALLOW_MULTI)


def replace(prog_fd: int, cgroup_path: str, attach_type: int, old_fd: int) -> None:
    """prog takes old's place among the cgroup's programs in one call (BPF_F_REPLACE)."""
    with cgroup_fd(cgroup_path) as fd:
        libbpf.prog_attach_replacing(prog_fd, fd, attach_type, old_fd)


def detach(prog_fd: int, cgroup_path: str, attach_type: int) -> None:
    with cgroup_fd(cgroup_path) as fd:
        libbpf.prog_detach(prog_fd, fd, attach_type)


def attached_ids(cgroup_path: str, attach_type: int) -> list[int]:
    with cgroup_fd(cgroup_path) as fd:
        return libbpf.prog_query(fd, attach_type)
