"""bpffs: mount it where asked, and keep our pins under <bpffs>/tpctl/ (our ownership tag).

The pin directory is ours only when it is a real directory (not a symlink) on a bpffs; only
BPF objects in it are ever unlinked. A bpffs is mounted only on an empty directory reached
through no symlink, and unmounted only when it is the very mount install made (its mount id
and device, recorded at the mount) and holds nothing else.
"""
from __future__ import annotations

import ctypes as ct
import os
import re
import stat

from engine.contract import foreign_writable_parent, mounts

from . import libbpf
from .catalogue import PIN_DIR_NAME


def mount_point_fstype(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Filesystem type mounted exactly at path (the last mount on a point wins), or None."""
    real = os.path.realpath(path)
    return next((kind for point, kind in reversed(mounts(mountinfo)) if point == real), None)


def is_bpffs(path: str) -> bool:
    return mount_point_fstype(path) == "bpf"


BPF_FS_MAGIC = 0xCAFE4A11


class BpffsPathError(OSError):
    """--ebpf-bpffs-path cannot take a bpffs without hiding or following something."""


def mount_point_problem(path: str) -> str | None:
    """Why a bpffs must not be mounted at path (None: it is a bpffs already, or an empty
    directory, or absent, each reached through no symlink)."""
    absolute = os.path.abspath(path)
    if os.path.realpath(absolute) == absolute and is_bpffs(path):
        return None
    if os.path.realpath(absolute) != absolute:
        return (f"--ebpf-bpffs-path {path} goes through a symlink (it resolves to {os.path.realpath(absolute)}); "
                "fix: give the real path, or mount bpffs there yourself")
    try:
        info = os.lstat(absolute)
    except FileNotFoundError:
        return _writable_parent(absolute)
    if not stat.S_ISDIR(info.st_mode):
        return f"--ebpf-bpffs-path {path} is not a directory; fix: give an empty directory or a mounted bpffs"
    if os.listdir(absolute):
        return (f"--ebpf-bpffs-path {path} is a non-empty directory that is not a bpffs: a bpffs mounted there "
                "would hide its files; fix: give an empty directory or a mounted bpffs (mount -t bpf bpf DIR)")
    return _writable_parent(absolute)


def _writable_parent(absolute: str) -> str | None:
    """Someone else who can write a parent could swap the path for a symlink between the check
    and the mount (the path has no symlink by then: mount_point_problem checked)."""
    found = foreign_writable_parent(absolute)
    if found is None:
        return None
    parent, info = found
    return (f"--ebpf-bpffs-path {absolute}: its parent {parent} is writable by others than root "
            f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}); fix: a path under "
            "root's own directories, or mount bpffs there yourself")


def mount_bpffs(path: str) -> bool:
    """Mounts bpffs at path unless one is there; returns True when we mounted it."""
    if is_bpffs(path):
        return False
    problem = mount_point_problem(path)
    if problem:
        raise BpffsPathError(problem)
    os.makedirs(path, exist_ok=True)
    # mount on the directory just checked, held open, never on whatever the name points at now
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        libc = ct.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", f"/proc/self/fd/{fd}".encode(), b"bpf", 0, b"mode=0700") != 0:
            err = ct.get_errno()
            raise OSError(err, f"mount -t bpf bpf {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return True


UMOUNT_NOFOLLOW = 8  # <sys/mount.h>: a symlink at path is not followed


def umount(path: str) -> None:
    libc = ct.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), UMOUNT_NOFOLLOW) != 0:
        err = ct.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")


# A fresh bpffs is not empty: kernels with CONFIG_BPF_PRELOAD put these iterators in its root.
PRELOADED = frozenset({"progs.debug", "maps.debug"})


def holds_others(bpffs_path: str) -> bool:
    """Whether anything but the kernel's preloaded files is in the bpffs root."""
    return any(name not in PRELOADED for name in os.listdir(bpffs_path))


NEXT = "__next"  # a new program's pin beside the old one's while an install replaces it


def pin_dir(bpffs_path: str) -> str:
    return os.path.join(bpffs_path, PIN_DIR_NAME)


def pin(fd: int, path: str) -> None:
    libbpf.obj_pin(fd, path)


def open_pin(path: str) -> int:
    return libbpf.obj_get(path)


def mount_identity(path: str, mountinfo: str = "/proc/self/mountinfo") -> dict | None:
    """The bpffs mounted at path as {"mount_id", "dev"} (the last mount there), or None."""
    real = os.path.realpath(path)
    found = None
    try:
        with open(mountinfo, encoding="utf-8") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields = left.split(" ")
                point = _unescape(fields[4]) if len(fields) > 4 else None
                if point == real and right.split(" ")[0] == "bpf":
                    found = {"mount_id": int(fields[0]), "dev": fields[2]}
    except (OSError, ValueError):
        return None
    return found


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fs_magic(fd: int) -> int:
    buf = ct.create_string_buffer(256)  # struct statfs; f_type is its first field
    libc = ct.CDLL(None, use_errno=True)
    if libc.fstatfs(fd, buf) != 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return ct.c_uint32.from_buffer(buf).value


class PinDirError(OSError):
    """<bpffs>/tpctl is not a real directory on a bpffs: nothing in it is ours."""


def _open_pin_dir(bpffs_path: str) -> int | None:
    """An fd of <bpffs>/tpctl when it is a real directory on a bpffs; None when absent.
    Raises PinDirError naming what it is instead."""
    d = pin_dir(bpffs_path)
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        kind = "a symlink" if os.path.islink(d) else "not a directory"
        raise PinDirError(f"{d} is {kind} ({err.strerror}): not tpctl's pin directory, left alone") from None
    if _fs_magic(fd) != BPF_FS_MAGIC:
        os.close(fd)
        raise PinDirError(f"{d} is not on a bpffs: not tpctl's pin directory, left alone")
    return fd


def pin_dir_problem(bpffs_path: str) -> str | None:
    try:
        fd = _open_pin_dir(bpffs_path)
    except PinDirError as err:
        return str(err)
    if fd is not None:
        os.close(fd)
    return None


def list_pins(bpffs_path: str) -> list[str]:
    """The entries of our pin directory; none when it fails the proof (pin_dir_problem)."""
    try:
        fd = _open_pin_dir(bpffs_path)
    except PinDirError:
        return []
    if fd is None:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _is_pinned_object(dir_fd: int, name: str) -> bool:
    """A regular file on the bpffs that bpf_obj_get opens: a pinned program or map."""
    if not stat.S_ISREG(os.lstat(name, dir_fd=dir_fd).st_mode):
        return False
    try:
        os.close(libbpf.obj_get(f"/proc/self/fd/{dir_fd}/{name}"))
    except OSError:
        return False
    return True


def remove_pin_dir(bpffs_path: str, warn=lambda line: None) -> list[str]:
    """Unpins the BPF objects under <bpffs>/tpctl/ and removes the dir once empty; anything
    else there (a directory, a symlink), or a pin dir that fails the proof, is left and said."""
    d = pin_dir(bpffs_path)
    try:
        fd = _open_pin_dir(bpffs_path)
    except PinDirError as err:
        warn(f"tpctl: warning: {err}")
        return []
    if fd is None:
        return []
    removed, kept = [], []
    try:
        for name in sorted(os.listdir(fd)):
            try:
                if _is_pinned_object(fd, name):
                    os.unlink(name, dir_fd=fd)
                    removed.append(f"unpinned {os.path.join(d, name)}")
                else:
                    kept.append(name)
            except FileNotFoundError:  # gone meanwhile: nothing left to unpin
                continue
    finally:
        os.close(fd)
    if kept:
        warn(f"tpctl: warning: left {d} in place: it holds what is not a BPF object ({', '.join(kept)})")
        return removed
    # the directory goes from the bpffs it was proven on, never through a path swapped since
    try:
        parent = os.open(bpffs_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        warn(f"tpctl: warning: left the empty {d} in place: {bpffs_path}: {err.strerror}")
        return removed
    try:
        if _fs_magic(parent) == BPF_FS_MAGIC:
            os.rmdir(PIN_DIR_NAME, dir_fd=parent)
            removed.append(f"removed {d}")
    finally:
        os.close(parent)
    return removed
