"""`make reboot` (also run by `make matrix`): tpctl's boot persistence across real reboots.

    python -m vagrant.reboot [--engines iptables,ebpf] [--kernel debian12-6.1] [--results DIR]
                             [--guest-timeout S] [--boot-timeout S] [--timeout-scale X] [--jobs N]

One QEMU guest per engine of reboot.yaml boots the kernel matrix's kernel with a debootstrapped
Debian root on its own virtio disk and systemd as PID 1 (vagrant/reboot_image.py makes the image:
nothing is mounted on the host). Its units (vagrant/reboot_guest.py) make the test topology at
every boot and then check: boot 1 `tpctl install --persist` redirects, reboot; boot 2
tpctl.service redirected again by itself, then `tpctl uninstall`, reboot; boot 3 nothing of
tpctl is left, power off. The guest has no network device but its disk and a 9p share (where it
writes what it found); its console is kept. Writes <results>/reboot.md and reboot.json and each
guest's records to <results>/reboot/<engine>/. Exit 0 when every check of every boot passed, 1
when one did not, 2 when the test cannot run (the message names the fix).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import yaml

from sandbox.netns import PROXY_UID
from vagrant import boot, kernels, matrix, reboot_guest, reboot_image, userlands
from vagrant import reboot_table as table
from vagrant.initramfs import MARK
from vagrant.kernels import HERE, MatrixError

REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
CONSOLE_HEAD, CONSOLE_TAIL = 100_000, 300_000  # bytes of a console log kept: the first boot's start, the end
PANIC_GRACE = 10  # seconds the console gets to say the rest of a kernel panic before QEMU is stopped
NEEDS = {"qemu-system-x86_64": "apt-get install qemu-system-x86", "qemu-img": "apt-get install qemu-utils",
         "mke2fs": "apt-get install e2fsprogs", "busybox": "apt-get install busybox-static",
         "modprobe": "apt-get install kmod", "unshare": "apt-get install util-linux",
         "setpriv": "apt-get install util-linux", "tar": "apt-get install tar", "git": "apt-get install git"}


@dataclass(frozen=True)
class EngineSpec:
    name: str
    flags: tuple[str, ...]
    engine: str


@dataclass(frozen=True)
class Spec:
    kernel: str
    suite: str
    engines: tuple[EngineSpec, ...]


def load(path: str = os.path.join(HERE, "reboot.yaml")) -> Spec:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    try:
        engines = tuple(EngineSpec(e["name"], tuple(str(f) for f in e.get("flags") or ()), e["engine"])
                        for e in data["engines"])
        spec = Spec(str(data["kernel"]), str(data["suite"]), engines)
    except (KeyError, TypeError) as err:
        raise MatrixError(f"{path}: needs kernel, suite and engines with name and engine ({err!r} missing)") from err
    names = [e.name for e in engines]
    problems = [f"duplicate engine {n}" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"{e.name}: engine {e.engine} is not one of {kernels.ENGINES + ('nftables',)}" for e in engines
                 if e.engine not in (*kernels.ENGINES, "nftables")]
    problems += [f"{e.name}: --persist is the test's own flag" for e in engines if "--persist" in e.flags]
    if not engines:
        problems.append("no engines")
    if problems:
        raise MatrixError(f"{path}: " + "; ".join(problems))
    return spec


def select(spec: Spec, names: str | None) -> list[EngineSpec]:
    if not names:
        return list(spec.engines)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {e.name for e in spec.engines}]
    if unknown:
        raise MatrixError(f"--engines: unknown {', '.join(unknown)}; reboot.yaml has "
                          + ", ".join(e.name for e in spec.engines))
    return [e for e in spec.engines if e.name in wanted]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vagrant.reboot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", help="comma list of reboot.yaml's engines (default: all)")
    parser.add_argument("--kernel", help="the kernels.yaml kernel to boot (default: reboot.yaml's)")
    parser.add_argument("--results", default=RESULTS, help="where reboot.md, reboot.json and reboot/<engine>/ go")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="auto: KVM when a probe guest boots with it, else TCG")
    parser.add_argument("--guest-timeout", type=int, default=5400,
                        help="seconds per guest, all three boots (QEMU is killed then)")
    parser.add_argument("--boot-timeout", type=int, default=2400,
                        help="seconds one boot may take to reach the end of its checks, tpctl.service at boot "
                             "included (the guest powers itself off then)")
    parser.add_argument("--timeout-scale", type=float, default=8,
                        help="TPCTL_TIMEOUT_SCALE in the guests (tpctl's own limits and the checks' waits)")
    parser.add_argument("--jobs", type=int, help="guests at once (default: every engine at once)")
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--setup-timeout", type=int, default=3600, help="seconds for making the root")
    return parser.parse_args(argv)


def preflight() -> None:
    if os.geteuid() != 0:
        raise MatrixError("run as root (sudo make reboot): the image's root is set up in a chroot, its files "
                          "belong to root")
    missing = [f"{tool} (fix: {fix})" for tool, fix in NEEDS.items() if not shutil.which(tool)]
    if missing:
        raise MatrixError("missing: " + ", ".join(missing))
    version = mke2fs_version()
    if version < (1, 43):
        raise MatrixError(f"mke2fs {'.'.join(map(str, version))} cannot fill an image from a folder (-d, since "
                          "1.43) (fix: apt-get install e2fsprogs from Debian 9 or newer)")


def mke2fs_version() -> tuple[int, ...]:
    out = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True, timeout=30)
    return reboot_image.parse_mke2fs_version(out.stderr + out.stdout)


def kernel_cmdline(job: dict) -> str:
    """The guest's kernel command line; QEMU gives the same one at each reboot. Pure.
    panic=0: a panicking kernel stays (the host sees it on the console and stops QEMU), where
    panic=-1 would boot again and again; loglevel=4 as in the kernel matrix (errors and worse)."""
    return f"console=ttyS0 loglevel=4 panic=0 {reboot_guest.cmdline_argument(job)}"


def qemu_argv(image: reboot_image.Image, overlay: str, share: str, accel: str, cpu: str, cpus: int, memory: str,
              job: dict) -> list[str]:
    """QEMU for one guest: no network device (-nodefaults, -net none), the overlay as its only
    disk, the share for its results, the serial console on stdout. Without -no-reboot: the guest's
    reboot resets the machine in the same QEMU process, which boots the same kernel again. Pure."""
    return ["qemu-system-x86_64", "-name", "tpctl-reboot", "-machine", "q35", "-accel", accel,
            "-cpu", "host" if accel == "kvm" else cpu, "-smp", str(cpus), "-m", memory,
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-net", "none", "-device", "virtio-rng-pci",
            "-kernel", image.kernel, "-initrd", image.initrd, "-append", kernel_cmdline(job),
            "-drive", f"file={overlay},format=qcow2,if=virtio,cache=writeback",
            "-virtfs", f"local,path={share},mount_tag={reboot_guest.SHARE_TAG},security_model=none,multidevs=remap"]


def guest_job(engine: EngineSpec, scale: float) -> dict:
    return {"name": engine.name, "engine": engine.engine, "flags": list(engine.flags), "timeout_scale": scale,
            "proxy_uid": PROXY_UID}


@dataclass
class Booted:
    exit: str
    seconds: float
    lines: list[tuple[float, str]]


def run_qemu(name: str, argv: list[str], console: str, timeout: float) -> Booted:
    """QEMU in a session of its own, its console copied to `console` with the time each line
    came; stopped (its process group, by id) at `timeout` or after a kernel panic."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    panic = threading.Event()
    with open(console, "wb") as log:
        log.write(("$ " + shlex.join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        boot.RUNNING.add(proc)

        def copy() -> None:
            pending = b""
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                now = round(time.monotonic() - started, 1)
                log.write(chunk)
                log.flush()
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace")
                    lines.append((now, line))
                    if table.PANIC in line:
                        panic.set()
                    if MARK in line:
                        print(f"reboot: {name} {now:7.0f} s: {line[line.find(MARK) + len(MARK) + 1:][:220]}", flush=True)
            if pending:
                lines.append((round(time.monotonic() - started, 1), pending.decode(errors="replace")))

        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
        ended, panicked_at = "", None
        try:
            while not ended:
                try:
                    code = proc.wait(timeout=1)
                    ended = f"exit {code}"
                except subprocess.TimeoutExpired:
                    now = time.monotonic()
                    if panic.is_set() and panicked_at is None:
                        panicked_at = now
                    if panicked_at is not None and now - panicked_at > PANIC_GRACE:
                        boot.stop_session(proc)
                        ended = "kernel panic"
                    elif now - started > timeout:
                        boot.stop_session(proc)
                        ended = f"killed after {timeout:.0f} s"
        finally:
            if proc.poll() is None:
                boot.stop_session(proc)
            boot.RUNNING.discard(proc)
        copier.join(timeout=30)  # EOF once QEMU is gone: every line is in `lines` then
        proc.stdout.close()
        # QEMU exits 0 on SIGTERM too: the guest's own power-off is the kernel's last line
        if ended == "exit 0" and any(table.POWER_DOWN in line for _, line in lines[-50:]):
            ended = "powered off"
        if ended != "powered off":
            log.write(f"\nreboot: QEMU ended: {ended}\n".encode())
    return Booted(ended, round(time.monotonic() - started, 1), lines)


def read_records(share: str) -> tuple[dict[int, dict], list[str]]:
    records, problems = {}, []
    for name in sorted(os.listdir(share)):
        if name.startswith("boot") and name.endswith(".json") and name[4:-5].isdigit():
            try:
                with open(os.path.join(share, name), encoding="utf-8") as handle:
                    records[int(name[4:-5])] = json.load(handle)
            except (OSError, ValueError) as err:
                problems.append(f"{name}: {err}")
    return records, problems


def keep(run_dir: str, share: str, console: str, into: str) -> None:
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(share, into)
    size = os.path.getsize(console)
    with open(console, "rb") as source, open(os.path.join(into, "console.log"), "wb") as target:
        if size <= CONSOLE_HEAD + CONSOLE_TAIL:
            shutil.copyfileobj(source, target)
        else:
            target.write(source.read(CONSOLE_HEAD))
            target.write(f"\n[... {size - CONSOLE_HEAD - CONSOLE_TAIL} bytes cut by vagrant/reboot.py ...]\n".encode())
            source.seek(-CONSOLE_TAIL, os.SEEK_END)
            target.write(source.read())
    shutil.rmtree(run_dir, ignore_errors=True)


def run_engine(engine: EngineSpec, image: reboot_image.Image, cpu: str, accel: str, args) -> table.EngineRun:
    runs = os.path.join(reboot_image.CACHE, "runs")
    os.makedirs(runs, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix=f"{engine.name}-", dir=runs)
    share, overlay, console = (os.path.join(run_dir, n) for n in ("share", "disk.qcow2", "console.log"))
    os.makedirs(share)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", os.path.abspath(image.disk),
                    overlay], check=True, timeout=120)
    argv = qemu_argv(image, overlay, share, accel, cpu, boot.default_cpus(accel), args.memory,
                     guest_job(engine, args.timeout_scale))
    print(f"reboot: {engine.name}: booting {image.release} under {accel} (up to {args.guest_timeout} s)", flush=True)
    booted = run_qemu(engine.name, argv, console, args.guest_timeout)
    records, problems = read_records(share)
    found = table.events(booted.lines)
    with open(os.path.join(share, "events.json"), "w", encoding="utf-8") as handle:  # the timed marks, kept
        json.dump([e.__dict__ for e in found], handle, indent=1)
    keep(run_dir, share, console, os.path.join(args.results, "reboot", engine.name))
    run = table.engine_run(engine.name, engine.engine, records, found, booted.seconds, booted.exit, problems)
    print(f"reboot: {engine.name}: QEMU {booted.exit} after {booted.seconds:.0f} s: "
          + ", ".join(f"boot {b.boot} {b.passed}/{len(b.checks)}" for b in run.boots)
          + f": {'ok' if run.ok else 'FAIL'}", flush=True)
    return run


def commit() -> str:
    """HEAD, and whether tracked files differ from it (what the guests' copy of the checkout holds
    beyond the commit; untracked files, such as earlier results, are not counted)."""
    git = ["git", "-c", f"safe.directory={REPO}", "-C", REPO]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           timeout=60).stdout.strip()
    return (head.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def other_guests() -> int:
    """QEMU processes on the host that this run did not start (another matrix, say)."""
    ours = {p.pid for p in boot.RUNNING}
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
                if handle.read().startswith("qemu-system") and int(pid) not in ours:
                    count += 1
        except OSError:
            continue
    return count


def lock():
    os.makedirs(reboot_image.CACHE, exist_ok=True)
    handle = open(os.path.join(reboot_image.CACHE, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise MatrixError(f"another `make reboot` is using {reboot_image.CACHE} (fix: wait for it)") from None
    return handle


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, matrix.stop_on_signal)
    signal.signal(signal.SIGINT, matrix.stop_on_signal)
    started = time.monotonic()
    # the commit before this run writes its results (untracked files would read as uncommitted changes)
    meta: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
                  "load_start": round(os.getloadavg()[0], 1), "other_guests": other_guests()}
    try:
        preflight()
        spec = load()
        engines = select(spec, args.engines)
        name = args.kernel or spec.kernel
        known = {k.name: k for k in kernels.load().kernels}
        if name not in known:
            raise MatrixError(f"--kernel {name}: kernels.yaml has {', '.join(known)}")
        held = lock()
        # what a run stopped by kill -9 left (its guests' overlays): no other run holds the lock
        shutil.rmtree(os.path.join(reboot_image.CACHE, "runs"), ignore_errors=True)
        kernel = kernels.fetch(known[name])
        logs = os.path.join(reboot_image.CACHE, "logs")
        os.makedirs(logs, exist_ok=True)
        bootstrap, _ = userlands.load()
        root, root_seconds = reboot_image.ensure_root(REPO, spec.suite, bootstrap, logs, args.setup_timeout)
        image = reboot_image.ensure_image(REPO, root, kernel, args.boot_timeout, args.timeout_scale, logs,
                                          root_seconds)
    except (MatrixError, userlands.UserlandError, reboot_image.ImageError, reboot_image.rootfs.RootError) as err:
        print(f"reboot: {err}", file=sys.stderr)
        return 2
    image_ready = round(time.monotonic() - started, 1)
    probed = None
    if args.accel == "auto" and boot.kvm_usable():
        probe_dir = tempfile.mkdtemp(prefix="kvm-probe-", dir=reboot_image.CACHE)
        probed = boot.probe_kvm(kernel.image, probe_dir)
        shutil.rmtree(probe_dir, ignore_errors=True)
    accel, accel_reason = boot.choose_accel(args.accel, boot.kvm_usable(), probed)
    print(f"reboot: {accel}: {accel_reason}; image ready after {image_ready:.0f} s "
          f"(root {'set up now' if root_seconds else 'cached'}, image {'made now' if image.image_seconds else 'cached'})",
          flush=True)
    os.makedirs(args.results, exist_ok=True)
    jobs = args.jobs or len(engines)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            try:
                runs = list(pool.map(lambda e: run_engine(e, image, kernel.spec.cpu, accel, args), engines))
            except BaseException:  # Ctrl-C included: no guest outlives the run
                pool.shutdown(wait=False, cancel_futures=True)
                boot.kill_running()
                raise
    finally:
        held.close()
    meta.update({"kernel": kernel.spec.name, "release": kernel.release,
                 "suite": spec.suite, "accel": accel, "accel_reason": accel_reason, "qemu": matrix.qemu_version(),
                 "timeout_scale": args.timeout_scale, "jobs": jobs, "engines": [e.name for e in engines],
                 "seconds": round(time.monotonic() - started, 1), "load_end": round(os.getloadavg()[0], 1),
                 "image": image_summary(image, image_ready)})
    text = table.markdown(runs, meta)
    record = table.as_json(runs, meta)
    with open(os.path.join(args.results, "reboot.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(os.path.join(args.results, "reboot.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    print(text)
    bad = sum(not r.ok for r in runs)
    print(f"reboot: {len(runs)} engines, {bad} not ok, {meta['seconds']:.0f} s; table in "
          f"{os.path.join(args.results, 'reboot.md')}")
    return 0 if record["ok"] else 1


def image_summary(image: reboot_image.Image, ready_seconds: float) -> dict:
    root = f"root set up now in {image.root_seconds:.0f} s" if image.root_seconds else "root cached"
    made = f"image made now in {image.image_seconds:.0f} s" if image.image_seconds else "image cached"
    size = f"{image.size_bytes / (1 << 30):.1f} GiB of files in a {image.stamp.get('image_mib', '?')} MiB ext4 image"
    return {"summary": f"{root}, {made} ({size}; ready {ready_seconds:.0f} s after the start)",
            "root_seconds": image.root_seconds, "image_seconds": image.image_seconds, "ready_seconds": ready_seconds,
            "size_bytes": image.size_bytes, "image_mib": image.stamp.get("image_mib"),
            "initramfs_modules": image.stamp.get("initramfs_modules")}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"reboot: stopped ({stop or 'Ctrl-C'}); every guest it booted has ended", file=sys.stderr)
        sys.exit(130)
