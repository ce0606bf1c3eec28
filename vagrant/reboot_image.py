"""The reboot test's disk: a debootstrapped Debian root with systemd as init, set up by the
project's own scripts/setup.sh, the checkout at /srv/tpctl, one kernel's modules and headers,
and the test's units; made into an ext4 image with `mke2fs -d` (nothing is mounted on the host).

Cache layout (vagrant/.cache/reboot/, ignored by git):
  roots/<suite>/         the userland matrix's pristine debootstrap tarball of <suite> extracted,
  roots/<suite>.key      then systemd and what scripts/setup.sh installs added in a chroot
  roots/<suite>.ready    (vagrant/chroot.py: private mount and pid namespaces); .key names the
                         inputs it was made from (setup.sh, pyproject.toml, the pristine root,
                         PACKAGES), .ready says the set-up finished for that key
  images/<kernel>/       disk.img (raw ext4, sparse), initrd (vagrant/initramfs.py), stamp.json:
                         remade when the checkout, the root or the guest's files change
  apt/, pip/             apt's archives and pip's cache for the set-up
Each guest boots a copy-on-write overlay of disk.img (vagrant/reboot.py): the image itself is
never written by a guest.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass

from vagrant import chroot, initramfs, rootfs
from vagrant.kernels import CACHE as MATRIX_CACHE
from vagrant.kernels import Kernel

CACHE = os.path.join(MATRIX_CACHE, "reboot")
USERLAND_CACHE = os.path.join(MATRIX_CACHE, "userlands")  # where `make userlands` keeps its pristine roots
# beyond what scripts/setup.sh installs: an init that boots from disk (systemd as /sbin/init),
# udev (module autoloading, device units), kmod (the kernel's modprobe), iproute2 (the topology)
PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "iproute2")
RECIPE_VERSION = "1"  # bump when what a set-up root holds changes in a way the hashed inputs miss
VENV_PYTHON = f"{rootfs.CHECKOUT}/.venv/bin/python"
# units the test does not need and that cost minutes of an emulated CPU (timers run at boot when
# they missed their time) or wait for hardware the guest has not
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer", "fstrim.timer",
          "dpkg-db-backup.timer", "e2scrub_reap.service", "getty-static.service", "getty@tty1.service",
          "serial-getty@ttyS0.service",
          "systemd-timesyncd.service", "nginx.service", "haproxy.service", "iperf3.service", "ssh.service")


class ImageError(Exception):
    """The image cannot be made (exit 2 for the runner); the message names the step and its log."""


@dataclass(frozen=True)
class Image:
    disk: str
    initrd: str
    kernel: str  # vmlinuz
    release: str
    root_seconds: float  # making and setting up the root now (0: cached)
    image_seconds: float  # mke2fs and the initramfs now (0: cached)
    size_bytes: int  # what the image's files take (apparent size)
    stamp: dict


def root_key(repo: str, pristine: str) -> str:
    return rootfs.setup_key_of(repo, f"{pristine}/{RECIPE_VERSION}/{','.join(PACKAGES)}")


def setup_command() -> list[str]:
    """What the set-up runs chrooted in the root, from the checkout: the packages above, the CAs,
    then the project's own set-up without the matrices' tools (QEMU, Vagrant, debootstrap). Pure."""
    return ["sh", "-c", "set -e; apt-get update -q; "
            f"apt-get install -y -q --no-install-recommends {' '.join(PACKAGES)}; "
            "update-ca-certificates >/dev/null; exec bash scripts/setup.sh --no-matrix"]


def ensure_root(repo: str, suite: str, bootstrap: rootfs.Bootstrap, logs: str, timeout: float,
                say=print) -> tuple[str, float]:
    """The set-up root of suite (made when missing or stale). Returns it and the seconds spent now."""
    started = time.monotonic()
    pristine = rootfs.pristine_path(USERLAND_CACHE, bootstrap, suite)
    if not os.path.exists(pristine):
        say(f"reboot: debootstrap {suite} (no pristine root in {USERLAND_CACHE})")
        pristine, _ = rootfs.ensure_pristine(CACHE, bootstrap, suite, os.path.join(logs, "debootstrap.log"), timeout)
    key = root_key(repo, rootfs.pristine_key(bootstrap, suite))
    root, fresh = rootfs.ensure_root(CACHE, suite, pristine, key, os.path.join(logs, "root.log"))
    ready = root + ".ready"
    if not fresh and _read(ready) == key:
        rootfs.copy_checkout(repo, root)
        return root, 0.0
    if os.path.exists(ready):
        os.unlink(ready)
    say(f"reboot: setting up the {suite} root ({'fresh' if fresh else 'again'}, key {key}): "
        f"{', '.join(PACKAGES)} and scripts/setup.sh --no-matrix")
    rootfs.furnish(root)
    rootfs.copy_checkout(repo, root)
    env = chroot.root_env(root, dict(os.environ))
    code = chroot.run_in_root(root, setup_command(), env, os.path.join(logs, "setup.log"), timeout,
                              cwd=rootfs.CHECKOUT, binds=rootfs.cache_binds(CACHE, suite))
    if code:
        raise ImageError(f"set-up of the {suite} root exited {code} (see {os.path.join(logs, 'setup.log')})")
    with open(ready, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return root, round(time.monotonic() - started, 1)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _content(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


# -- what the guest gets beyond the root (pure) --------------------------------------------------
def guest_files(boot_timeout: int, timeout_scale: float) -> dict[str, tuple[int, str]]:
    """Path in the root -> (mode, text): the test's units and systemd's settings. The units'
    texts come from vagrant/reboot_guest.py (they name its commands)."""
    from vagrant import reboot_guest

    files = {f"/etc/systemd/system/{name}": (0o644, text)
             for name, text in reboot_guest.units(boot_timeout).items()}
    files["/etc/systemd/system.conf.d/tpctl-reboot.conf"] = (0o644, (
        "# vagrant/reboot_image.py: tpctl's and the test's time limits scale as in the kernel matrix's guests\n"
        "# (engine/timeouts.py); tpctl.service reads it at boot like every unit\n"
        f"[Manager]\nDefaultEnvironment=TPCTL_TIMEOUT_SCALE={timeout_scale:g}\n"))
    files["/etc/fstab"] = (0o644, "# vagrant/reboot_image.py: the initramfs mounts /dev/vda read-write as /\n")
    files["/etc/hostname"] = (0o644, "tpctl-reboot\n")
    files["/etc/hosts"] = (0o644, "127.0.0.1 localhost\n127.0.1.1 tpctl-reboot\n::1 localhost\n")
    return files


def enabled_links() -> dict[str, str]:
    """The symlinks `systemctl enable` would make for the test's units, and the masks. Pure."""
    from vagrant import reboot_guest

    links = {f"/etc/systemd/system/multi-user.target.wants/{name}": f"../{name}" for name in reboot_guest.UNITS}
    links.update({f"/etc/systemd/system/{name}": "/dev/null" for name in MASKED})
    return links


def furnish_guest(root: str, kernel: Kernel, boot_timeout: int, timeout_scale: float) -> None:
    """The per-image part of the root: kernel modules and headers, the units, no leftovers of the
    set-up (policy-rc.d, the host's resolv.conf) nor of an earlier image (another kernel's modules)."""
    at = lambda path: os.path.join(root, path.lstrip("/"))  # noqa: E731 - a local shorthand
    for path in ("/usr/sbin/policy-rc.d", "/etc/resolv.conf"):
        if os.path.lexists(at(path)):
            os.unlink(at(path))
    files = guest_files(boot_timeout, timeout_scale)
    # a fixed machine id: one journal across the boots (journalctl -b -1 reads the last boot's)
    files["/etc/machine-id"] = (0o444, uuid.uuid5(uuid.NAMESPACE_URL, f"tpctl-reboot/{kernel.release}").hex + "\n")
    for path, (mode, text) in files.items():  # written only when different: the image's stamp hashes mtimes
        if _content(at(path)) != text:
            os.makedirs(os.path.dirname(at(path)), exist_ok=True)
            with open(at(path), "w", encoding="utf-8") as handle:
                handle.write(text)
        os.chmod(at(path), mode)
    for path, target in enabled_links().items():
        if os.path.islink(at(path)) and os.readlink(at(path)) == target:
            continue
        os.makedirs(os.path.dirname(at(path)), exist_ok=True)
        if os.path.lexists(at(path)):
            os.unlink(at(path))
        os.symlink(target, at(path))
    _proxy_user(root)
    os.makedirs(at("/var/log/journal"), exist_ok=True)
    state = at("/var/lib/tpctl-reboot")  # the guest's boot counter lives there: none in the image
    if os.path.isdir(state):
        shutil.rmtree(state)
    _modules_and_headers(root, kernel)


PROXY_USER = ("kuma-dp", 5678)  # the sidecar's user; systemd's User= needs one that exists (a bare uid fails)


def proxy_user_lines(name: str = PROXY_USER[0], uid: int = PROXY_USER[1]) -> dict[str, str]:
    """The lines useradd would add for the sidecar's user, per file under /etc. Pure."""
    return {"passwd": f"{name}:x:{uid}:{uid}:sidecar of the tpctl reboot test:/nonexistent:/usr/sbin/nologin",
            "group": f"{name}:x:{uid}:", "shadow": f"{name}:!:19000::::::", "gshadow": f"{name}:!::"}


def _proxy_user(root: str) -> None:
    for name, line in proxy_user_lines().items():
        path = os.path.join(root, "etc", name)
        lines = (_content(path) or "").splitlines()
        if any(existing.split(":")[0] == line.split(":")[0] for existing in lines):
            continue
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


OUR_MODULES = ".tpctl-reboot-modules"  # marks a modules folder this file filled


def _modules_and_headers(root: str, kernel: Kernel) -> None:
    modules = os.path.join(root, "usr/lib/modules")
    for folder in glob.glob(os.path.join(modules, "*")):  # another kernel's, from an earlier image
        if os.path.basename(folder) != kernel.release and os.path.exists(os.path.join(folder, OUR_MODULES)):
            shutil.rmtree(folder)
    target = os.path.join(modules, kernel.release)
    if not os.path.exists(os.path.join(target, OUR_MODULES)):
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(kernel.moddir):
            source, dest = os.path.join(kernel.moddir, name), os.path.join(target, name)
            if os.path.lexists(dest):  # build/source links of Debian's headers package of this very release
                continue
            subprocess.run(["cp", "-al", source, dest], check=True, timeout=300)
        open(os.path.join(target, OUR_MODULES), "w").close()
    # BCC compiles against /lib/modules/<release>/build and source: this kernel's own headers
    for source in kernel.headers:
        dest = os.path.join(root, "usr/src", os.path.basename(source))
        if not os.path.isdir(dest):
            subprocess.run(["cp", "-al", source, dest], check=True, timeout=300)
    for link, source in zip(("build", "source"), kernel.headers):
        path = os.path.join(target, link)
        if not os.path.lexists(path):
            os.symlink(f"/usr/src/{os.path.basename(source)}", path)


def tree_digest(root: str, subdirs: tuple[str, ...]) -> str:
    """A hash of names, sizes, modes and mtimes under root/subdir (what an image was made from);
    bytecode left out (made for the image, after the check)."""
    digest = hashlib.sha256()
    for subdir in subdirs:
        for folder, dirs, files in os.walk(os.path.join(root, subdir.lstrip("/"))):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                path = os.path.join(folder, name)
                info = os.lstat(path)
                digest.update(f"{os.path.relpath(path, root)}\0{info.st_size}\0{info.st_mode}\0"
                              f"{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def image_size(used_bytes: int) -> int:
    """The image's size in MiB: what the files take, a quarter more (ext4's own metadata, the
    journal) and 1 GiB free for the guests' writes. Pure."""
    return (used_bytes * 5 // 4 + (1 << 30)) // (1 << 20) + 1


def parse_mke2fs_version(text: str) -> tuple[int, ...]:
    """'mke2fs 1.47.0 (5-Feb-2023)' -> (1, 47, 0); (0,) when not found. Pure."""
    found = re.search(r"mke2fs (\d+(?:\.\d+)+)", text)
    return tuple(int(p) for p in found.group(1).split(".")) if found else (0,)


def mke2fs_argv(root: str, image: str, size_mib: int, version: tuple[int, ...]) -> list[str]:
    """ext4 filled from a folder (-d), without mounting. Only features every kernel of the matrix
    reads: from 1.47 on mke2fs knows orphan_file (Linux 5.15+), which some mke2fs.conf turn on;
    older ones would refuse the option. Pure."""
    features = ["-O", "^orphan_file"] if version >= (1, 47) else []
    return ["mke2fs", "-q", "-F", "-t", "ext4", *features, "-L", "tpctl-reboot", "-E", "root_owner=0:0",
            "-d", root, image, f"{size_mib}M"]


def _used_bytes(root: str) -> int:
    out = subprocess.run(["du", "-sb", "--one-file-system", root], capture_output=True, text=True, timeout=600)
    return int(out.stdout.split()[0]) if out.returncode == 0 else 8 << 30


def ensure_image(repo: str, root: str, kernel: Kernel, boot_timeout: int, timeout_scale: float,
                 logs: str, root_seconds: float, say=print) -> Image:
    """disk.img and initrd for kernel, remade when their inputs changed."""
    folder = os.path.join(CACHE, "images", kernel.spec.name)
    os.makedirs(folder, exist_ok=True)
    disk, initrd = os.path.join(folder, "disk.img"), os.path.join(folder, "initrd")
    furnish_guest(root, kernel, boot_timeout, timeout_scale)
    inputs = {"root_key": _read(root + ".ready"), "release": kernel.release, "packages": list(kernel.packages),
              "checkout": tree_digest(root, (rootfs.CHECKOUT,)), "guest": tree_digest(root, ("/etc",)),
              "recipe": RECIPE_VERSION}
    stamp_path = os.path.join(folder, "stamp.json")
    try:
        with open(stamp_path, encoding="utf-8") as handle:
            stamp = json.load(handle)
    except (OSError, ValueError):
        stamp = {}
    if stamp.get("inputs") == inputs and os.path.exists(disk) and os.path.exists(initrd):
        return Image(disk, initrd, kernel.image, kernel.release, root_seconds, 0.0, stamp.get("size_bytes", 0), stamp)
    started = time.monotonic()
    if os.path.exists(stamp_path):
        os.unlink(stamp_path)
    _precompile(root, logs)
    used = _used_bytes(root)
    size = image_size(used)
    say(f"reboot: making {disk} ({size} MiB, {used / (1 << 30):.1f} GiB of files) and its initramfs")
    part = disk + ".part"
    if os.path.exists(part):
        os.unlink(part)
    with open(os.path.join(logs, "mke2fs.log"), "w", encoding="utf-8") as log:
        version = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True, timeout=30)
        argv = mke2fs_argv(root, part, size, parse_mke2fs_version(version.stderr + version.stdout))
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    if result.returncode:
        raise ImageError(f"mke2fs exited {result.returncode} (see {os.path.join(logs, 'mke2fs.log')})")
    os.replace(part, disk)
    base = kernel.moddir[: -len(f"/lib/modules/{kernel.release}")]
    try:
        modules = initramfs.build(base, kernel.release, shutil.which("busybox") or "/bin/busybox", initrd)
    except initramfs.InitramfsError as err:
        raise ImageError(str(err)) from None
    stamp = {"inputs": inputs, "size_bytes": used, "image_mib": size, "initramfs_modules": modules,
             "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(stamp_path, "w", encoding="utf-8") as handle:
        json.dump(stamp, handle, indent=1)
    return Image(disk, initrd, kernel.image, kernel.release, root_seconds, round(time.monotonic() - started, 1),
                 used, stamp)


def _precompile(root: str, logs: str) -> None:
    """The checkout's bytecode, made by the root's own Python: under an emulated CPU every first
    import would compile it at boot (the venv's packages were compiled by pip)."""
    env = chroot.root_env(root, {})
    code = chroot.run_in_root(root, [VENV_PYTHON, "-m", "compileall", "-q", "-j", "0", "engine", "ebpf", "sandbox",
                                     "vagrant"], env, os.path.join(logs, "compileall.log"), 600, cwd=rootfs.CHECKOUT)
    if code:
        raise ImageError(f"compileall in the root exited {code} (see {os.path.join(logs, 'compileall.log')})")
