"""`make matrix`: boot each Debian kernel of kernels.yaml in a throwaway VM and prove the engine.

    python -m vagrant.matrix [--ci] [--kernels a,b] [--accel auto|kvm|tcg] [--tests ...] [--fetch-only]

Per kernel: fetch its packages (cached in vagrant/.cache), boot it with the host's root shared
read-only, and in the guest (vagrant/guest.py) record what `install --ebpf-enabled` chooses,
`tpctl status --json` and the probe record, what `install --nftables-enabled` chooses, run the fallback checks for that kernel and the
netns traffic suite for every engine. Writes vagrant/results/<kernel>/ and the table
vagrant/results/matrix.md (+ matrix.json). Exit 0 when every row is as expected, 1 when one is
not, 2 when the matrix cannot run (a missing tool or a failed download; the message says the fix).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from sandbox.netns import PROXY_UID, SandboxError, check_runs_as
from vagrant import boot, kernels, table
from vagrant.kernels import CACHE, HERE, MatrixError

REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
# what each guest leaves in its run dir that the results keep
ARTEFACTS = ("result.json", "status.json", "probe.json", "choice.txt", "nftables-choice.txt", "pytest.log",
             "junit.xml", "console.log")
# every guest mounts a fresh tmpfs on these: virtme-ng's init the first five (as seen in
# /proc/mounts of a 6.1 guest), vagrant/guest.py's prepare the last two
GUEST_TMPFS = ("/run", "/dev/shm", "/var/log", "/var/tmp", "/var/cache", "/tmp", "/usr/src")
CONSOLE_KEEP = 200_000  # bytes of a console log kept in results (the end is what explains a failure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vagrant.matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", action="store_true", help="the CI subset: kernels marked `ci: true`, `ci_tests`")
    parser.add_argument("--kernels", help="comma list of kernel names from kernels.yaml (default: all)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="auto: KVM when a probe guest boots with it, else TCG")
    parser.add_argument("--tests", nargs="+", help="pytest arguments for each guest (default: kernels.yaml)")
    parser.add_argument("--no-fallbacks", action="store_true", help="skip the fallback rows")
    parser.add_argument("--fetch-only", action="store_true",
                        help="fetch and unpack the chosen kernels into the cache, boot nothing (.ci/run does it "
                             "beside the test suite: the downloads wait on the network)")
    parser.add_argument("--guest-timeout", type=int, default=10800,
                        help="seconds per guest, boot included (the full suite took 72 min per guest for 6.1 and about "
                             "2 h for 5.10, three guests at once under TCG)")
    parser.add_argument("--cpus", type=int, help="guest CPUs (default: 1 under TCG, 2 under KVM)")
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--jobs", type=int,
                        help="guests booted at once (default: every kernel at once, 4 with kernels.yaml's; the "
                             "time limits in the guests grow with the guests per host core)")
    parser.add_argument("--results", default=RESULTS, help="where the table and per-kernel records go")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of kernels and fallbacks not run now from the results' matrix.json")
    return parser.parse_args(argv)


def preflight() -> None:
    """Every tool the matrix needs, each with the package that brings it."""
    if os.geteuid() != 0:
        raise MatrixError("run as root (sudo make matrix): the guests run the privileged tests as root")
    needs = {"qemu-system-x86_64": "apt-get install qemu-system-x86", "busybox": "apt-get install busybox-static",
             "depmod": "apt-get install kmod", "dpkg-deb": "apt-get install dpkg",
             "setarch": "apt-get install util-linux"}
    missing = [f"{tool} (fix: {fix})" for tool, fix in needs.items() if not shutil.which(tool)]
    if not os.access(boot.VIRTME_RUN, os.X_OK):
        missing.append(f"{boot.VIRTME_RUN} (fix: {os.path.dirname(sys.executable)}/pip install virtme-ng)")
    if missing:
        raise MatrixError("missing: " + ", ".join(missing))
    try:  # the guests run the sidecar as uid 5678 from this very checkout
        check_runs_as(PROXY_UID)
    except SandboxError as err:
        raise MatrixError(str(err)) from None
    hidden = [d for d in GUEST_TMPFS if os.path.realpath(REPO).startswith(d + "/")]
    if hidden:
        raise MatrixError(f"the checkout {REPO} is under {hidden[0]}, which every guest mounts afresh, so the "
                          f"guests would not see it (fix: run the matrix from a clone outside "
                          f"{', '.join(GUEST_TMPFS)})")


def select(matrix: kernels.Matrix, names: str | None, ci: bool) -> list[kernels.KernelSpec]:
    chosen = [k for k in matrix.kernels if k.ci] if ci else list(matrix.kernels)
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {k.name for k in matrix.kernels}]
        if unknown:
            raise MatrixError(f"--kernels: unknown {', '.join(unknown)}; kernels.yaml has "
                              + ", ".join(k.name for k in matrix.kernels))
        chosen = [k for k in matrix.kernels if k.name in wanted]
    return chosen


def job_for(kernel: kernels.Kernel, tests: list[str], fallbacks: list[kernels.FallbackSpec],
            timeout: int, choice: bool = True, timeout_scale: float = 8) -> dict:
    return {"name": kernel.spec.name, "release": kernel.release, "usr_src": os.path.join(kernel.root, "usr", "src"),
            "moddir": kernel.moddir, "cached_root_tag": boot.CACHED_ROOT_TAG,
            "choice": choice, "tests": tests, "tests_timeout": max(60, timeout - 300),
            # the sandbox's bounds are sized for real machines: TPCTL_TIMEOUT_SCALE in the guest
            "timeout_scale": timeout_scale,
            "fallbacks": [{"name": f.name, "condition": f.condition, "engine": f.engine, "reason": f.reason}
                          for f in fallbacks]}


def run_guest(kernel: kernels.Kernel, job: dict, accel: str, args,
              kernel_args=()) -> tuple[dict | None, boot.Boot, str]:
    """One guest in a temporary run dir under the cache (never under /tmp: the guest mounts over
    /tmp); returns its result.json, the boot, and the temporary dir (removed by the caller)."""
    os.makedirs(os.path.join(CACHE, "runs"), exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix=f"{job['name']}-", dir=os.path.join(CACHE, "runs"))
    job_path = os.path.join(run_dir, "job.json")
    with open(job_path, "w", encoding="utf-8") as handle:
        json.dump(job, handle, indent=1)
    script = f"cd {REPO} && exec {sys.executable} -m vagrant.guest {job_path}"
    guest = boot.Guest(kernel.image, run_dir, script, accel, kernel.spec.cpu, args.cpus or boot.default_cpus(accel),
                       args.memory, tuple(kernel_args))
    booted = boot.run(guest, args.guest_timeout)
    try:
        with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        result = None
    return with_counts_so_far(result, job, run_dir), booted, run_dir


def with_counts_so_far(result: dict | None, job: dict, run_dir: str) -> dict | None:
    """A guest killed while its tests ran has no test record: count what its pytest.log shows."""
    log = os.path.join(run_dir, "pytest.log")
    if not job["tests"] or (result or {}).get("tests") or not os.path.exists(log):
        return result
    with open(log, encoding="utf-8", errors="replace") as handle:
        return dict(result or {}, tests=table.tests_from_log(handle.read(), None, 0.0))


def keep(run_dir: str, into: str) -> None:
    shutil.rmtree(into, ignore_errors=True)
    os.makedirs(into)
    for name in ARTEFACTS:
        source = os.path.join(run_dir, name)
        if not os.path.exists(source):
            continue
        if name == "console.log" and os.path.getsize(source) > CONSOLE_KEEP:
            with open(source, "rb") as handle:
                handle.seek(-CONSOLE_KEEP, os.SEEK_END)
                tail = handle.read()
            with open(os.path.join(into, name), "wb") as handle:
                handle.write(b"[... start cut ...]\n" + tail)
        else:
            shutil.copy(source, os.path.join(into, name))
    shutil.rmtree(run_dir, ignore_errors=True)


def commit() -> str:
    out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip() or "?"


def qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].split("version")[-1].strip() if out else "?"


def stop_on_signal(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (CI's timeout, kill PID) and SIGINT even from a background job (where the shell
    # ignores it) end the matrix the way Ctrl-C does: every guest it booted goes with it.
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    try:
        preflight()
        matrix = kernels.load()
        specs = select(matrix, args.kernels, args.ci)
        fetched = [kernels.fetch(spec) for spec in specs]
    except MatrixError as err:
        print(f"matrix: {err}", file=sys.stderr)
        return 2
    if args.fetch_only:
        for kernel in fetched:
            print(f"matrix: {kernel.spec.name}: {kernel.release} in the cache", flush=True)
        return 0
    tests = args.tests or (matrix.ci_tests if args.ci else matrix.tests)
    by_name = {k.spec.name: k for k in fetched}
    fallbacks = [] if args.no_fallbacks else [f for f in matrix.fallbacks if f.on in by_name]

    probed = None
    if args.accel == "auto" and boot.kvm_usable():
        probe_dir = tempfile.mkdtemp(prefix="kvm-probe-", dir=CACHE)
        probed = boot.probe_kvm(fetched[0].image, probe_dir)
        shutil.rmtree(probe_dir, ignore_errors=True)
    accel, accel_reason = boot.choose_accel(args.accel, boot.kvm_usable(), probed)
    print(f"matrix: {accel}: {accel_reason}", flush=True)

    os.makedirs(args.results, exist_ok=True)
    # more guests than cores share them: the sandbox's waits get longer in proportion
    jobs = args.jobs or len(fetched)
    scale = 8 * max(1.0, min(jobs, len(fetched) + 1) / (os.cpu_count() or 1))
    # one guest per kernel (with its uname-2.6 checks), then one boot without cgroup2 per such check
    boots = [(kernel, job_for(kernel, tests, [f for f in fallbacks if f.on == kernel.spec.name
                                              and f.condition == "uname-2.6"], args.guest_timeout, True, scale), ())
             for kernel in fetched]
    boots += [(by_name[f.on], dict(job_for(by_name[f.on], [], [f], args.guest_timeout, choice=False), name=f.name),
               (boot.LEGACY_CGROUPS,)) for f in fallbacks if f.condition == "no-cgroup2"]

    def one(kernel: kernels.Kernel, job: dict, kernel_args: tuple) -> tuple[dict | None, boot.Boot]:
        print(f"matrix: booting {kernel.spec.name} ({kernel.release}) under {accel} for {job['name']}", flush=True)
        result, booted, run_dir = run_guest(kernel, job, accel, args, kernel_args)
        keep(run_dir, os.path.join(args.results, job["name"]))
        print(f"matrix: {job['name']}: guest done in {booted.seconds:.0f} s", flush=True)
        return result, booted

    # TCG guests have one vCPU each: more guests than host cores share them (the scale above)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        try:
            done = list(pool.map(lambda b: one(*b), boots))
        except BaseException:  # Ctrl-C included: no guest may outlive the matrix
            pool.shutdown(wait=False, cancel_futures=True)
            boot.kill_running()
            raise
    kernel_rows, fallback_rows = [], []
    for (kernel, job, _), (result, booted) in zip(boots, done):
        found = {f["name"]: f for f in (result or {}).get("fallbacks", [])}
        fallback_rows += [table.fallback_row(f["name"], f["condition"], f["engine"], found.get(f["name"]))
                          for f in job["fallbacks"]]
        if job["choice"]:
            problem = None if booted.returncode is not None else f"killed after {args.guest_timeout} s"
            row = table.kernel_row(kernel.spec.name, kernel.spec.engine, accel, result, booted.seconds, problem,
                                   nftables_expected=kernel.spec.nftables)
            kernel_rows.append(row)
            print(f"matrix: {row.name}: engine {row.engine or '-'}, --nftables-enabled {row.nftables or '-'}, tests {row.passed} passed / {row.failed} failed"
                  f" / {row.skipped} skipped, {row.boot_seconds:.0f} s: {'ok' if row.ok else 'FAIL'}", flush=True)
    for row in fallback_rows:
        print(f"matrix: {row.name}: engine {row.engine or '-'} ({row.why or 'no reason given'}), "
              f"--no-fallback exit {row.no_fallback_exit}: {'ok' if row.ok else 'FAIL'}", flush=True)

    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "accel": accel, "accel_reason": accel_reason,
            "qemu": qemu_version(), "tests": tests, "ci": args.ci,
            "packages": {k.spec.name: list(k.packages) for k in fetched}}
    label = f"{meta['when']} at {commit()}"
    kernel_rows = [dataclasses.replace(r, run=label) for r in kernel_rows]
    fallback_rows = [dataclasses.replace(r, run=label) for r in fallback_rows]
    meta["runs"] = {label: {"tests": tests, "ci": args.ci}}
    previous_path = os.path.join(args.results, "matrix.json")
    if args.update and os.path.exists(previous_path):
        with open(previous_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        kernel_rows, fallback_rows, meta = table.merge(previous, kernel_rows, fallback_rows, meta,
                                                       [k.name for k in matrix.kernels],
                                                       [f.name for f in matrix.fallbacks])
    text = table.markdown(kernel_rows, fallback_rows, meta)
    with open(os.path.join(args.results, "matrix.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    record = table.as_json(kernel_rows, fallback_rows, meta)
    with open(os.path.join(args.results, "matrix.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    print(text)
    bad = sum(not r.ok for r in kernel_rows) + sum(not r.ok for r in fallback_rows)
    print(f"matrix: {len(kernel_rows)} kernels and {len(fallback_rows)} fallback checks, {bad} not as expected; "
          f"table in {os.path.join(args.results, 'matrix.md')}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"matrix: stopped ({stop or 'Ctrl-C'}); every guest it booted has ended", file=sys.stderr)
        sys.exit(130)
