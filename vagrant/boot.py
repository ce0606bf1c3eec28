"""Booting one throwaway guest: the virtme-run command line, KVM or TCG, a bounded run.

virtme-ng shares the host's root read-only over 9p and runs our guest script as root. We boot
the legacy q35 machine with 9p (not microvm + virtio-fs), because microvm needs KVM and the
same path must work under TCG. virtme-run starts QEMU as its child, in the session of its own
that we give it: on time-out we kill that process group, by id, and only it.

The console goes through a pipe that we copy into console.log: virtme has QEMU open
/proc/self/fd/1 and /2 as `file` chardevs (four of them, plus the kernel console), and QEMU opens
a file chardev with O_TRUNC at offset 0, so on a regular file each writer cut the log and wrote
over the others (console.log came out empty). A pipe has no offset to clobber.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

VIRTME_RUN = os.path.join(os.path.dirname(sys.executable), "virtme-run")
# virtme-ng-init mounts cgroup v1 hierarchies only (no cgroup2) when the kernel command line
# carries this, as systemd's legacy mode does: a guest booted without cgroup2.
LEGACY_CGROUPS = "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"
# virtme mounts the root 9p share with cache=none: every stat and read of a Python import is a
# round trip to QEMU, and under TCG a Python start took 11 s. A second read-only share of the
# same root, which the guest mounts with cache=loose over /usr and the checkout, cut it to ~3 s.
CACHED_ROOT_TAG = "tpctl-root"
CACHED_ROOT = f"local,path=/,mount_tag={CACHED_ROOT_TAG},security_model=none,readonly=on,multidevs=remap"
# the kernel's own console in console.log too (virtme sends it to /dev/null): errors, oopses and
# panics only (virtme's `quiet loglevel=1` would keep panics only; the last loglevel= wins), so a
# guest that dies in boot or mid-test says why. On kernels with xz modules (6.12, 7.x) the log
# opens with one "Invalid ELF header magic: != ELF" per module of virtme's initramfs (netfs, 9p,
# ...): busybox insmod offers the compressed file to the kernel first, then loads it decompressed;
# they do load (the root is mounted with them)
KERNEL_LOGLEVEL = "loglevel=4"


RUNNING: set[subprocess.Popen] = set()  # guests booted by this process and not yet ended


@dataclass(frozen=True)
class Guest:
    image: str  # vmlinuz
    run_dir: str  # shared read-write with the guest; holds job.json and what the guest writes
    script: str  # shell command run as root in the guest
    accel: str  # "kvm" | "tcg"
    cpu: str = "max"  # QEMU -cpu under TCG (KVM uses virtme's `host`)
    cpus: int = 2
    memory: str = "2G"
    kernel_args: tuple[str, ...] = ()


def command(guest: Guest, virtme_run: str = VIRTME_RUN) -> list[str]:
    argv = [virtme_run, "--kimg", guest.image, "--mods", "auto", "--force-9p", "--disable-microvm",
            "--cpus", str(guest.cpus), "--memory", guest.memory, "--rwdir", guest.run_dir,
            "--name", "tpctl-matrix", "--show-boot-console", "--script-sh", guest.script]
    for arg in (KERNEL_LOGLEVEL, *guest.kernel_args):
        argv += ["-a", arg]
    if guest.accel == "tcg":
        argv += ["--disable-kvm"]
    # --qemu-opts swallows the rest of the line, so it comes last; QEMU takes the last -cpu
    argv += ["--qemu-opts", "-virtfs", CACHED_ROOT]
    if guest.accel == "tcg" and guest.cpu != "max":
        argv += ["-cpu", guest.cpu]
    return argv


@dataclass(frozen=True)
class Boot:
    returncode: int | None  # None: killed at the time-out
    seconds: float
    console: str  # the console log's path


def run(guest: Guest, timeout: float, console_name: str = "console.log") -> Boot:
    """Boot, wait at most `timeout` seconds, kill our QEMU if still there. Console to a file,
    through a pipe (see the module's docstring)."""
    console = os.path.join(guest.run_dir, console_name)
    started = time.monotonic()
    with open(console, "wb") as log:
        log.write(("$ " + shlex.join(command(guest)) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(command(guest), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.add(proc)
        copier = threading.Thread(target=copy_stream, args=(proc.stdout, log), daemon=True)
        copier.start()
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            stop_session(proc)
            killed = f"\nmatrix: guest still running after {timeout:.0f} s: killed its process group {proc.pid}\n"
        else:
            killed = ""
        finally:
            RUNNING.discard(proc)
        copier.join(timeout=30)  # EOF once QEMU and virtme-run are gone
        proc.stdout.close()
        log.write(killed.encode())
    return Boot(code, round(time.monotonic() - started, 1), console)


def copy_stream(source, into) -> None:
    """Everything from `source` (a pipe) into `into`, as it comes, until EOF."""
    for chunk in iter(lambda: source.read1(65536), b""):
        into.write(chunk)
        into.flush()


def kill_running() -> None:
    """On Ctrl-C or an error: end every guest this process started (their own sessions outlive us)."""
    for proc in list(RUNNING):
        stop_session(proc)


def stop_session(proc: subprocess.Popen) -> None:
    # our own session: virtme-run and its QEMU child are the whole process group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def default_cpus(accel: str) -> int:
    """One vCPU under TCG: with two, QEMU's multi-threaded TCG stops every vCPU for each
    cross-CPU TLB flush, and a Python start took 1.6 s instead of 0.6 s here."""
    return 1 if accel == "tcg" else 2


def kvm_usable(device: str = "/dev/kvm") -> bool:
    return os.path.exists(device) and os.access(device, os.R_OK | os.W_OK)


def choose_accel(requested: str, device_usable: bool, probe_booted: bool | None) -> tuple[str, str]:
    """KVM when asked for or when a probe guest booted with it; else TCG. Pure.

    /dev/kvm being there is not enough: a paravirtual KVM (as on this project's machines) opens
    fine and then cannot run a stock kernel, so `auto` boots a probe guest under KVM first.
    """
    if requested == "tcg":
        return "tcg", "--accel tcg"
    if requested == "kvm":
        return "kvm", "--accel kvm"
    if not device_usable:
        return "tcg", "no usable /dev/kvm: software emulation (TCG)"
    if probe_booted:
        return "kvm", "a probe guest booted under KVM"
    return "tcg", "/dev/kvm is there but a probe guest did not boot under KVM: software emulation (TCG)"


def probe_kvm(image: str, run_dir: str, timeout: float = 90) -> bool:
    """Boot `image` under KVM with a guest that only writes a marker file."""
    marker = os.path.join(run_dir, "kvm-ok")
    guest = Guest(image, run_dir, f"echo ok > {shlex.quote(marker)}", "kvm", cpus=1, memory="512M")
    run(guest, timeout, console_name="kvm-probe.log")
    return os.path.exists(marker)
