"""The userland roots: made with debootstrap, cached, and furnished for a run.

Cache layout (default vagrant/.cache/userlands/, ignored by git):
  pristine/<suite>-<key>.tar  debootstrap's output, untouched; <key> hashes the debootstrap
                              arguments, so only changing those runs debootstrap again
  roots/<suite>/              the working root: the pristine one extracted, then set up
  roots/<suite>.key           the set-up key it was extracted for: a hash of scripts/setup.sh,
                              pyproject.toml and the pristine key; another key re-extracts the
                              pristine tarball (seconds) instead of running debootstrap (minutes)
  apt/<suite>/, pip/<suite>/  apt's archives and pip's cache, mounted into the root: a re-extracted
                              root installs the same packages again without downloading them
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from vagrant import chroot

CHECKOUT = "/srv/tpctl"  # where the checkout goes in each root; it and its parents are 0755
# kept in the root's checkout between runs although git lists none of them: the venv (so set-up's
# stamp spares a reinstall) and what an editable install writes next to pyproject.toml
KEPT = (".venv", "tpctl.egg-info", ".git")
KEY_VERSION = "1"  # bump when what a cached root holds changes in a way the hashed inputs miss


class RootError(Exception):
    """A root could not be made or reused (exit 2 for the matrix; the message says why)."""


@dataclass(frozen=True)
class Bootstrap:
    mirror: str
    variant: str
    include: tuple[str, ...]


def debootstrap_argv(boot: Bootstrap, suite: str, target: str) -> list[str]:
    return ["debootstrap", f"--variant={boot.variant}", f"--include={','.join(boot.include)}", suite, target,
            boot.mirror]


def pristine_key(boot: Bootstrap, suite: str) -> str:
    """The hash of the debootstrap arguments (without the target folder): names the pristine tarball."""
    argv = debootstrap_argv(boot, suite, "TARGET")
    return hashlib.sha256(json.dumps([KEY_VERSION, argv]).encode()).hexdigest()[:16]


def setup_key(setup_sh: bytes, pyproject: bytes, pristine: str) -> str:
    """The hash that decides whether a set-up root is reused: what setup.sh does, what it installs
    from pyproject.toml, and which pristine root it started from."""
    digest = hashlib.sha256()
    for part in (KEY_VERSION.encode(), setup_sh, pyproject, pristine.encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def setup_key_of(repo: str, pristine: str) -> str:
    with open(os.path.join(repo, "scripts", "setup.sh"), "rb") as setup, \
            open(os.path.join(repo, "pyproject.toml"), "rb") as project:
        return setup_key(setup.read(), project.read(), pristine)


def remove_tree(path: str) -> None:
    """rm -rf a root, but never while anything is mounted in it or runs in it: with /dev bound in,
    a plain rm -rf would delete the host's device nodes."""
    if not os.path.lexists(path):
        return
    mounted, running = chroot.mounts_under(path), chroot.processes_under(path)
    if mounted or running:
        raise RootError(f"{path} is in use (mounts {mounted[:3]}, processes {running[:5]}); not removing it")
    result = subprocess.run(["rm", "-rf", "--one-file-system", path], capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise RootError(f"rm -rf {path}: {result.stderr.strip()}")


def pristine_path(cache: str, boot: Bootstrap, suite: str) -> str:
    return os.path.join(cache, "pristine", f"{suite}-{pristine_key(boot, suite)}.tar")


def ensure_pristine(cache: str, boot: Bootstrap, suite: str, log: str, timeout: float,
                    usage: dict | None = None) -> tuple[str, float]:
    """The pristine tarball for suite, made with debootstrap when missing. Returns its path and the
    seconds debootstrap took (0 when cached); `usage` gets its CPU seconds (chroot.run)."""
    tarball = pristine_path(cache, boot, suite)
    if os.path.exists(tarball):
        return tarball, 0.0
    os.makedirs(os.path.dirname(tarball), exist_ok=True)
    target = tarball[:-len(".tar")] + ".build"
    remove_tree(target)
    started = time.monotonic()
    # in a private mount and pid namespace: debootstrap mounts /proc and /sys in its target, and a
    # killed debootstrap must not leave them mounted on the host
    code = chroot.run(chroot.isolated(debootstrap_argv(boot, suite, target)), log, timeout, usage)
    if code:
        raise RootError(f"debootstrap {suite} exited {code} (see {log})")
    seconds = time.monotonic() - started
    partial = tarball + ".part"
    code = chroot.run(["tar", "--numeric-owner", "--xattrs", "-C", target, "-cf", partial, "."], log, 900)
    if code:
        raise RootError(f"tar of {target} exited {code} (see {log})")
    os.replace(partial, tarball)
    remove_tree(target)
    return tarball, seconds


def ensure_root(cache: str, suite: str, tarball: str, key: str, log: str) -> tuple[str, bool]:
    """roots/<suite>, extracted afresh from the pristine tarball when its set-up key differs.
    Returns the root and whether it was extracted now."""
    root = os.path.join(cache, "roots", suite)
    stamp = root + ".key"
    try:
        with open(stamp, encoding="utf-8") as handle:
            if handle.read().strip() == key and os.path.isdir(root):
                return root, False
    except OSError:
        pass
    os.makedirs(os.path.dirname(root), exist_ok=True)
    for stale in (stamp, root, root + ".new"):
        remove_tree(stale)
    code = chroot.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C",
                       _mkdir(root + ".new"), "-xf", tarball], log, 900)
    if code:
        raise RootError(f"extracting {tarball} exited {code} (see {log})")
    os.replace(root + ".new", root)
    with open(stamp, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return root, True


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def furnish(root: str) -> None:
    """What every run needs in the root beyond debootstrap's output; idempotent, so done each run."""
    # the host's CAs (a TLS-intercepting proxy's among them): set-up runs update-ca-certificates
    local = _mkdir(os.path.join(root, "usr/local/share/ca-certificates"))
    for crt in glob.glob("/usr/local/share/ca-certificates/*.crt"):
        shutil.copyfile(crt, os.path.join(local, os.path.basename(crt)))
    # names resolve with the host's resolver as it is now (debootstrap copied it once, and it may
    # change); without a resolv.conf glibc asks 127.0.0.1, where nothing answers
    resolv = os.path.join(root, "etc/resolv.conf")
    if os.path.islink(resolv):
        os.unlink(resolv)
    shutil.copyfile("/etc/resolv.conf", resolv)
    # sid's Release files carry a Valid-Until that a frozen mirror snapshot outlives
    with open(os.path.join(root, "etc/apt/apt.conf.d/99tpctl-userland"), "w", encoding="utf-8") as handle:
        handle.write('// vagrant/rootfs.py: a mirror snapshot outlives sid\'s Valid-Until\n'
                     'Acquire::Check-Valid-Until "false";\n')
    # no package may start its service: nginx and haproxy would listen in the host's network
    # namespace during set-up (the root has no init, but their scripts would start them directly)
    policy = os.path.join(root, "usr/sbin/policy-rc.d")
    with open(policy, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\n# vagrant/rootfs.py: no service starts in a userland root\nexit 101\n")
    os.chmod(policy, 0o755)
    for path in ("root/.cache/pip", "var/cache/apt/archives/partial"):  # mount points for the caches
        _mkdir(os.path.join(root, path))


def cache_binds(cache: str, suite: str) -> tuple[tuple[str, str], ...]:
    """(host dir, dir in the root) for apt's archives and pip's cache, kept across re-extractions."""
    apt, pip = os.path.join(cache, "apt", suite), os.path.join(cache, "pip", suite)
    for path in (os.path.join(apt, "partial"), pip):
        os.makedirs(path, exist_ok=True)
    return (apt, "/var/cache/apt/archives"), (pip, "/root/.cache/pip")


def checkout_files(repo: str) -> list[str]:
    """The working tree as git sees it: tracked files and untracked ones not ignored, as they are
    now (uncommitted edits included; files deleted but not yet committed left out)."""
    out = subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", repo, "ls-files", "-z", "-co",
                          "--exclude-standard"], capture_output=True, timeout=120)
    if out.returncode:
        raise RootError(f"git ls-files in {repo}: {out.stderr.decode(errors='replace').strip()}")
    names = sorted(set(filter(None, out.stdout.decode().split("\0"))))
    return [n for n in names if os.path.lexists(os.path.join(repo, n))]


def copy_checkout(repo: str, root: str) -> int:
    """Mirror the checkout into root/srv/tpctl: copy what changed (mtimes kept, so setup.sh's
    `pyproject.toml -nt stamp` sees the host's edits only), delete what git no longer lists, keep
    KEPT. Directories 0755 and files world-readable: the sidecar runs as uid 5678 from there."""
    dest = os.path.join(root, CHECKOUT.lstrip("/"))
    for path in (root, os.path.join(root, "srv"), dest):
        _mkdir(path)
        os.chmod(path, 0o755)
    names = checkout_files(repo)
    wanted = set(names)
    for name in names:
        source, target = os.path.join(repo, name), os.path.join(dest, name)
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            if os.path.lexists(parent):
                os.unlink(parent)
            os.makedirs(parent, mode=0o755)
        if os.path.islink(source):
            if os.path.lexists(target):
                os.unlink(target)
            os.symlink(os.readlink(source), target)
            continue
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        info = os.stat(source)
        try:
            same = os.lstat(target)
            if same.st_size == info.st_size and same.st_mtime_ns == info.st_mtime_ns:
                continue
        except OSError:
            pass
        shutil.copy2(source, target)
        os.chmod(target, (info.st_mode & 0o777) | 0o444)
    _prune(dest, wanted)
    _copy_git(repo, dest)
    for folder, dirs, _files in os.walk(dest):
        dirs[:] = [d for d in dirs if d not in KEPT or folder != dest]
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o755)
    return len(names)


def _copy_git(repo: str, dest: str) -> None:
    """The repository itself (about 1 MB), afresh: tests run `git ls-files` in the checkout (the
    sandbox-access test clones it that way) and the benchmark names the commit, so in the root
    `git status` must say what it says on the host. A .git file (a worktree's pointer to a host
    path) would point nowhere in the root: then the root gets none."""
    source, target = os.path.join(repo, ".git"), os.path.join(dest, ".git")
    if os.path.lexists(target):
        shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.unlink(target)
    if os.path.isdir(source):
        shutil.copytree(source, target, symlinks=True)


def _prune(dest: str, wanted: set[str]) -> None:
    for folder, dirs, files in os.walk(dest, topdown=True):
        rel = os.path.relpath(folder, dest)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in KEPT]
            files = [f for f in files if f not in KEPT]
        for name in files:
            path = os.path.normpath(os.path.join(rel, name))
            if path not in wanted:
                os.unlink(os.path.join(folder, name))
    for folder, _dirs, _files in os.walk(dest, topdown=False):  # folders left empty
        if folder != dest and not os.listdir(folder) and os.path.relpath(folder, dest).split(os.sep)[0] not in KEPT:
            os.rmdir(folder)
