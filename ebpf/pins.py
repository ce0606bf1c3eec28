"""bpffs: mount it where asked, and keep our pins under <bpffs>/tpctl/ (our ownership tag)."""
from __future__ import annotations

import ctypes as ct
import os

from engine.contract import mounts

from . import libbpf
from .catalogue import PIN_DIR_NAME


def mount_point_fstype(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Filesystem type mounted exactly at path (the last mount on a point wins), or None."""
    real = os.path.realpath(path)
    return next((kind for point, kind in reversed(mounts(mountinfo)) if point == real), None)


def is_bpffs(path: str) -> bool:
    return mount_point_fstype(path) == "bpf"


def mount_bpffs(path: str) -> bool:
    """Mounts bpffs at path unless one is there; returns True when we mounted it."""
    if is_bpffs(path):
        return False
    os.makedirs(path, exist_ok=True)
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ct.get_errno()
        raise OSError(err, f"mount -t bpf bpf {path}: {os.strerror(err)}")
    return True


def umount(path: str) -> None:
    libc = ct.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 0) != 0:
        err = ct.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")


# A fresh bpffs is not empty: kernels with CONFIG_BPF_PRELOAD put these iterators in its root.
PRELOADED = frozenset({"progs.debug", "maps.debug"})


def holds_others(bpffs_path: str) -> bool:
    """Whether anything but the kernel's preloaded files is in the bpffs root."""
    return any(name not in PRELOADED for name in os.listdir(bpffs_path))


def pin_dir(bpffs_path: str) -> str:
    return os.path.join(bpffs_path, PIN_DIR_NAME)


def pin(fd: int, path: str) -> None:
    libbpf.obj_pin(fd, path)


def open_pin(path: str) -> int:
    return libbpf.obj_get(path)


def list_pins(bpffs_path: str) -> list[str]:
    d = pin_dir(bpffs_path)
    if not os.path.isdir(d):
        return []
    return sorted(os.listdir(d))


def remove_pin_dir(bpffs_path: str) -> list[str]:
    """Unpins everything under <bpffs>/tpctl/ (all of it is ours) and removes the dir."""
    d = pin_dir(bpffs_path)
    removed = []
    for name in list_pins(bpffs_path):
        os.unlink(os.path.join(d, name))
        removed.append(f"unpinned {os.path.join(d, name)}")
    if os.path.isdir(d):
        os.rmdir(d)
        removed.append(f"removed {d}")
    return removed
