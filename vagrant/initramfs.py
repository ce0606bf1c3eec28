"""The reboot test's initramfs: busybox, the modules that reach the disk, an /init that mounts
it and hands over to its /sbin/init (systemd). Written as a newc cpio archive from Python, so
building it needs neither cpio nor a mount.

The kernel matrix's kernels are Debian's generic ones: virtio_blk and ext4 are modules there
(virtio_pci too up to 6.1), so the kernel alone cannot mount a disk root. modprobe resolves
what each needs, in load order, from the kernel's own modules.dep; the archive gets those files
(decompressed: busybox insmod offers the compressed file to the kernel first, see boot.py).
"""
from __future__ import annotations

import lzma
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass

# what mounting an ext4 virtio disk needs; missing ones are fine when built in ("builtin ..."), and
# crc32c is ext4's soft dependency (its checksums), which --show-depends lists too
DISK_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
MARK = "TPCTL-REBOOT"  # every line of ours on the console starts with it (vagrant/reboot_table.py parses them)
DEVICE = "/dev/vda"  # the first virtio disk: the root


class InitramfsError(Exception):
    """The initramfs cannot be made (a module missing from the kernel's tree); the message says which."""


@dataclass(frozen=True)
class Entry:
    name: str  # path in the archive, without a leading /
    mode: int  # with the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node


def _header(ino: int, entry: Entry, size: int, name: bytes) -> bytes:
    fields = (ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0, size, 0, 0,
              entry.rdev[0], entry.rdev[1], len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def archive(entries: list[Entry]) -> bytes:
    """A newc ("070701") cpio archive of entries, then the trailer. Pure."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode()
        trailer = entry.name == "TRAILER!!!"
        out += _header(0 if trailer else ino, entry, len(entry.data), name) + name + b"\0"
        out += _pad(len(out))
        out += entry.data + _pad(len(entry.data))
    return bytes(out)


def module_files(show_depends: str) -> list[str]:
    """The module paths of `modprobe --show-depends` output, in load order, each once; built-in
    modules ("builtin x") need no file. Pure."""
    files: list[str] = []
    for line in show_depends.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod" and words[1] not in files:
            files.append(words[1])
    return files


def resolve_modules(base: str, release: str, modules: tuple[str, ...] = DISK_MODULES) -> list[str]:
    """The files of `modules` and their dependencies under base/lib/modules/<release>."""
    files: list[str] = []
    for module in modules:
        result = subprocess.run(["modprobe", "-d", base, "-S", release, "--show-depends", module],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            if module == "crc32c_generic":  # built in, or crc32c comes from another driver
                continue
            raise InitramfsError(f"modprobe --show-depends {module} ({release} under {base}): "
                                 f"{result.stderr.strip()}")
        files += [f for f in module_files(result.stdout) if f not in files]
    return files


def module_bytes(path: str) -> bytes:
    """A module file as the kernel takes it: .ko.xz decompressed (zstd would need a module of its own)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        raise InitramfsError(f"{path}: zstd-compressed modules are not supported here")
    return data


def init_script(modules: list[str], wait_seconds: int) -> str:
    """/init: load the modules, wait (bounded) for the disk, mount it read-write, switch_root to
    its /sbin/init. Every failure is said on the console and powers the guest off. Pure."""
    insmods = "\n".join(f"insmod /modules/{shlex.quote(m)} || say \"insmod {m} failed\"" for m in modules)
    return f"""#!/bin/busybox sh
# vagrant/initramfs.py: the disk's modules, the disk, then systemd
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() {{ echo "{MARK} initramfs: $*" > /dev/console; }}
fail() {{ say "FAILED: $*"; sleep 2; poweroff -f; }}
say "started (kernel $(uname -r))"
{insmods}
tries=0
while [ ! -b {DEVICE} ] && [ $tries -lt {wait_seconds * 5} ]; do sleep 0.2; tries=$((tries + 1)); done
[ -b {DEVICE} ] || fail "no {DEVICE} after {wait_seconds} s"
mount -t ext4 -o rw {DEVICE} /newroot || fail "mount {DEVICE}"
# /sbin/init is a link to /lib/systemd/systemd, which resolves only in the new root
[ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ] || fail "no /sbin/init on {DEVICE}"
umount /proc /sys
mount --move /dev /newroot/dev
say "switching to {DEVICE}'s /sbin/init"
exec switch_root /newroot /sbin/init
"""


def entries(busybox: str, module_paths: list[str], wait_seconds: int) -> list[Entry]:
    """Everything the archive holds: directories, /dev/console (the kernel opens it for /init
    before devtmpfs is there), busybox, the modules and /init."""
    with open(busybox, "rb") as handle:
        box = handle.read()
    names = [os.path.basename(p).removesuffix(".xz") for p in module_paths]
    out = [Entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys", "newroot", "modules")]
    out.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    out.append(Entry("bin/busybox", stat.S_IFREG | 0o755, box))
    out += [Entry(f"modules/{name}", stat.S_IFREG | 0o644, module_bytes(path)) for name, path in zip(names, module_paths)]
    out.append(Entry("init", stat.S_IFREG | 0o755, init_script(names, wait_seconds).encode()))
    return out


def build(base: str, release: str, busybox: str, target: str, wait_seconds: int = 60) -> list[str]:
    """Write the initramfs of the kernel unpacked under base to target; returns the modules in it."""
    paths = resolve_modules(base, release)
    data = archive(entries(busybox, paths, wait_seconds))
    with open(target + ".part", "wb") as handle:
        handle.write(data)
    os.replace(target + ".part", target)
    return [os.path.basename(p) for p in paths]
