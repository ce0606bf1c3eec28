"""`make userlands`: the test suite in each Debian userland of userlands.yaml, on the host's kernel.

    python -m vagrant.userlands [--suites a,b] [--jobs N] [--cache DIR] [--results DIR] [--update]
                                [--timeout S] [--tests PYTEST_ARGS...]

Per userland: a root made with debootstrap from Debian's archive (vagrant/rootfs.py: cached,
re-extracted when setup.sh, pyproject.toml or the debootstrap arguments change), this checkout
copied to /srv/tpctl in it, the project's own `bash scripts/setup.sh` run chrooted in it, then
(vagrant/userland_guest.py) the engine choice and the whole test suite with TPCTL_NO_SKIP=1, in
private mount, pid and network namespaces (vagrant/chroot.py). Writes the table to
<results>/userlands.md and userlands.json and each root's records to <results>/userlands/<suite>/.
Exit 0 when every row is ok, 1 when one is not, 2 when the matrix cannot run (the fix is named).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import yaml

from ebpf.requirements import CGROUP2_FIX
from engine.probe import mounts_of_type
from vagrant import chroot, guest, rootfs
from vagrant import table as kernel_table
from vagrant import userland_table as table

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.path.join(HERE, ".cache", "userlands")
RESULTS = os.path.join(HERE, "results")
OUT = "/var/lib/tpctl-userland"  # the guest's run folder, in the root (cleared before each run)
ARTEFACTS = ("result.json", "choice.txt", "probe.json", "status.json", "junit.xml", "pytest.log")
LOG_HEAD, LOG_TAIL = 64_000, 192_000  # bytes kept of a long log: the first tests and the failures
NEEDS = {"debootstrap": "apt-get install debootstrap (scripts/setup.sh installs it)",
         "unshare": "apt-get install util-linux", "setpriv": "apt-get install util-linux",
         "tar": "apt-get install tar", "git": "apt-get install git", "ip": "apt-get install iproute2",
         "chroot": "apt-get install coreutils"}


class UserlandError(Exception):
    """The matrix cannot run (exit 2); the message names the fix."""


@dataclass(frozen=True)
class Spec:
    name: str
    suite: str
    engine: str


def load(path: str = os.path.join(HERE, "userlands.yaml")) -> tuple[rootfs.Bootstrap, list[Spec]]:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    try:
        boot = data["debootstrap"]
        bootstrap = rootfs.Bootstrap(boot["mirror"], boot["variant"], tuple(boot["include"]))
        specs = [Spec(u["name"], u["suite"], u.get("engine", "")) for u in data["userlands"]]
    except (KeyError, TypeError) as err:
        raise UserlandError(f"{path}: needs debootstrap {{mirror, variant, include}} and userlands with name "
                            f"and suite ({err!r} missing)") from err
    problems = [f"duplicate {what} {v}" for what in ("name", "suite")
                for v in {getattr(s, what) for s in specs} if [getattr(s, what) for s in specs].count(v) > 1]
    problems += [f"{s.name}: engine {s.engine} is not ebpf or iptables" for s in specs
                 if s.engine not in ("", "ebpf", "iptables")]
    if problems:
        raise UserlandError(f"{path}: " + "; ".join(problems))
    return bootstrap, specs


def select(specs: list[Spec], wanted: str | None) -> list[Spec]:
    if not wanted:
        return specs
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [n for n in names if n not in {s.suite for s in specs} | {s.name for s in specs}]
    if unknown:
        raise UserlandError(f"--suites: unknown {', '.join(unknown)}; userlands.yaml has "
                            + ", ".join(s.suite for s in specs))
    return [s for s in specs if s.suite in names or s.name in names]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vagrant.userlands", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", help="comma list of suites (or names) from userlands.yaml (default: all)")
    parser.add_argument("--cache", default=CACHE, help="where roots, pristine tarballs and apt/pip caches live")
    parser.add_argument("--results", default=RESULTS, help="where userlands.md/.json and userlands/<suite>/ go")
    parser.add_argument("--update", action="store_true", help="keep the rows of suites not run now")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds per userland: debootstrap, set-up and tests (waiting for a turn not counted)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="userlands in flight at once (made and set up, or tested); the tests run one at a "
                             "time. 2: the next root is set up while the last one's tests run (1: one after "
                             "the other)")
    parser.add_argument("--test-jobs", type=int, default=1,
                        help="userlands in their tests at once (default 1: the tests one at a time)")
    parser.add_argument("--tests", nargs="+", default=[], help="pytest arguments (default: the whole suite)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make and set up the roots, run no test and write no results: a later run with "
                             "the same --cache finds them ready (.ci/run prepares them beside the host's suite)")
    parser.add_argument("--timeout-scale", type=float, default=1.0,
                        help="TPCTL_TIMEOUT_SCALE for tpctl's and the sandbox's time limits in the roots")
    return parser.parse_args(argv)


def preflight(cache: str) -> str:
    """Refuses what cannot work, naming the fix; returns the host's cgroup2 mount."""
    if os.geteuid() != 0:
        raise UserlandError("run as root (sudo make userlands): debootstrap, chroot and the privileged tests need it")
    missing = [f"{tool} (fix: {fix})" for tool, fix in NEEDS.items() if not shutil.which(tool)]
    if missing:
        raise UserlandError("missing: " + ", ".join(missing))
    if not os.path.isdir(os.path.join(REPO, ".git")) and not os.path.isfile(os.path.join(REPO, ".git")):
        raise UserlandError(f"{REPO} is not a git checkout: the roots get its `git ls-files -co --exclude-standard`")
    cgroup2 = next(iter(mounts_of_type("cgroup2")), None)
    if not cgroup2:  # each run gets a cgroup of its own under it, and the suite needs cgroup2
        raise UserlandError(f"no cgroup2 mount in /proc/self/mountinfo (fix: {CGROUP2_FIX})")
    os.makedirs(cache, exist_ok=True)
    return cgroup2


def lock(cache: str):
    handle = open(os.path.join(cache, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserlandError(f"another `make userlands` is using {cache} (fix: wait for it, or give --cache)") from None
    return handle


def cgroup_name(cache: str, suite: str) -> str:
    """The run's cgroup: one per suite and cache (a cache is used by one run at a time, see lock()),
    so two runs with two caches never remove each other's cgroups. Pure."""
    return f"tpctl-userland-{suite}-{hashlib.sha256(os.path.abspath(cache).encode()).hexdigest()[:6]}"


def trimmed_copy(source: str, target: str) -> None:
    """Copy a log, keeping its head and tail when it is long."""
    size = os.path.getsize(source)
    if size <= LOG_HEAD + LOG_TAIL:
        shutil.copyfile(source, target)
        return
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(src.read(LOG_HEAD))
        dst.write(f"\n[... {size - LOG_HEAD - LOG_TAIL} bytes cut by vagrant/userlands.py ...]\n".encode())
        src.seek(-LOG_TAIL, os.SEEK_END)
        dst.write(src.read())


class Userland:
    """One row's work: prepare() makes and sets up the root, test() runs the guest in it."""

    def __init__(self, spec: Spec, bootstrap: rootfs.Bootstrap, args: argparse.Namespace, cgroup2: str):
        self.spec, self.bootstrap, self.args, self.cgroup2 = spec, bootstrap, args, cgroup2
        self.logs = os.path.join(args.cache, "logs", spec.suite)
        self.root = ""
        self.result: dict | None = None  # the root's result.json, once test() ran
        self.setup: dict = {"exit": None, "seconds": 0.0, "debootstrap_seconds": 0.0, "problems": []}
        self.used = 0.0  # seconds of this userland's own work before the current step
        self.phase = 0.0  # when the current step started (monotonic)

    def in_root(self, argv: list[str], env: dict[str, str], log: str, timeout: float, **kwargs) -> int:
        """argv chrooted in the root, in a cgroup of this run's own, removed after (vagrant/chroot.py)."""
        try:
            cgroup = chroot.make_cgroup(self.cgroup2, cgroup_name(self.args.cache, self.spec.suite))
        except OSError as err:
            raise rootfs.RootError(str(err)) from None
        try:
            return chroot.run_in_root(self.root, argv, env, os.path.join(self.logs, log), timeout, cgroup=cgroup,
                                      cgroup2=self.cgroup2, **kwargs)
        finally:
            self.setup["problems"] += [f"left behind: {p}" for p in chroot.remove_cgroup(cgroup)]

    def say(self, text: str) -> None:
        print(f"userlands: {self.spec.suite}: {text}", flush=True)

    def left(self) -> float:
        """Seconds left of this userland's --timeout (at least a minute: a step always gets a try)."""
        return max(60.0, self.args.timeout - self.used - (time.monotonic() - self.phase))

    def prepare(self) -> Userland:
        self.phase = time.monotonic()
        shutil.rmtree(self.logs, ignore_errors=True)
        os.makedirs(self.logs)
        try:
            self._prepare()
        except rootfs.RootError as err:
            self.setup["problems"].append(str(err))
            self.say(f"FAILED: {err}")
        self.used += time.monotonic() - self.phase
        self.setup["prepare_seconds"] = round(time.monotonic() - self.phase, 1)  # debootstrap, extraction, set-up
        return self

    def _prepare(self) -> None:
        suite, cache = self.spec.suite, self.args.cache
        if not os.path.exists(rootfs.pristine_path(cache, self.bootstrap, suite)):
            self.say("debootstrap (no pristine root cached)")
        usage: dict = {}
        tarball, seconds = rootfs.ensure_pristine(cache, self.bootstrap, suite,
                                                  os.path.join(self.logs, "debootstrap.log"), self.left(), usage)
        self.setup.update(debootstrap_seconds=round(seconds, 1), debootstrap_cpu_seconds=usage.get("cpu_seconds", 0.0))
        if seconds:
            self.say(f"debootstrap done in {seconds:.0f} s")
        key = rootfs.setup_key_of(REPO, rootfs.pristine_key(self.bootstrap, suite))
        self.root, fresh = rootfs.ensure_root(cache, suite, tarball, key, os.path.join(self.logs, "setup.log"))
        rootfs.remove_tree(os.path.join(self.root, OUT.lstrip("/")))  # no record of an earlier run is kept
        rootfs.furnish(self.root)
        files = rootfs.copy_checkout(REPO, self.root)
        self.say(f"{'fresh root' if fresh else 'cached root'} (set-up key {key}), {files} checkout files; "
                 f"running scripts/setup.sh")
        env = chroot.root_env(self.root, dict(os.environ))
        started = time.monotonic()
        usage = {}
        code = self.in_root(["sh", "-c", "update-ca-certificates >/dev/null && exec bash scripts/setup.sh"], env,
                            "setup.log", self.left(), cwd=rootfs.CHECKOUT, binds=rootfs.cache_binds(cache, suite),
                            usage=usage)
        self.setup.update(exit=code, seconds=round(time.monotonic() - started, 1),
                          cpu_seconds=usage.get("cpu_seconds", 0.0))
        self.say(f"setup.sh exit {code} in {self.setup['seconds']:.0f} s")

    def test(self) -> dict | None:
        """The engine choice and the tests, chrooted, in a network namespace of their own."""
        if self.setup["exit"] != 0:
            return None
        self.phase = time.monotonic()

        out = os.path.join(self.root, OUT.lstrip("/"))
        rootfs.remove_tree(out)
        os.makedirs(out)
        budget = self.left()
        job = {"suite": self.spec.suite, "tests": list(self.args.tests), "timeout_scale": self.args.timeout_scale,
               "tests_timeout": max(60, int(budget) - 300)}  # room for the choice and the record
        with open(os.path.join(out, "job.json"), "w", encoding="utf-8") as handle:
            json.dump(job, handle, indent=1)
        self.say(f"engine choice and tests (up to {budget:.0f} s)")
        env = chroot.root_env(self.root, {})
        try:
            usage: dict = {}
            code = self.in_root([f"{rootfs.CHECKOUT}/.venv/bin/python", "-m", "vagrant.userland_guest",
                                 f"{OUT}/job.json"], env, "guest.log", budget, cwd=rootfs.CHECKOUT, net=True,
                                dummy=guest.DUMMY, usage=usage)
            self.setup["test_cpu_seconds"] = usage.get("cpu_seconds", 0.0)
        except rootfs.RootError as err:
            self.setup["problems"].append(str(err))
            return None
        self.used += time.monotonic() - self.phase
        self.setup["test_wall_seconds"] = round(time.monotonic() - self.phase, 1)  # choice and versions too
        try:
            with open(os.path.join(out, "result.json"), encoding="utf-8") as handle:
                result = json.load(handle)
        except (OSError, ValueError):
            result = None
        if code:
            limit = " (its time limit)" if code == 124 else ""
            self.setup["problems"].append(f"the run in the root exited {code}{limit}")
        # stopped mid-suite: junit.xml is written only at the end, so count from pytest.log
        if result is not None and not result.get("tests") and os.path.exists(os.path.join(out, "pytest.log")):
            with open(os.path.join(out, "pytest.log"), encoding="utf-8", errors="replace") as log:
                result["tests"] = kernel_table.tests_from_log(log.read(), None, 0.0)
        return result

    def keep(self, into: str) -> None:
        shutil.rmtree(into, ignore_errors=True)
        os.makedirs(into)
        out = os.path.join(self.root, OUT.lstrip("/")) if self.root else ""
        sources = [(os.path.join(out, n), n) for n in ARTEFACTS if out]
        sources += [(os.path.join(self.logs, n), n) for n in ("debootstrap.log", "setup.log", "guest.log")]
        for source, name in sources:
            if os.path.isfile(source) and os.path.getsize(source):
                trimmed_copy(source, os.path.join(into, name))
        with open(os.path.join(into, "host.json"), "w", encoding="utf-8") as handle:  # what the host measured
            json.dump(self.setup, handle, indent=1, sort_keys=True)


def commit() -> str:
    out = subprocess.run(["git", "-c", f"safe.directory={REPO}", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=30)
    dirty = subprocess.run(["git", "-c", f"safe.directory={REPO}", "-C", REPO, "status", "--porcelain"],
                           capture_output=True, text=True, timeout=60).stdout.strip()
    return (out.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def leftovers(cache: str, cgroups: list[str]) -> list[str]:
    """What must never outlive a run: mounts in the cache, processes chrooted in it, the runs'
    cgroups. (The tests' network namespaces are pinned under the root's own /run tmpfs, in its
    private mount namespace: the host's `ip netns list` never shows them.)"""
    found = [f"mount left: {m}" for m in chroot.mounts_under(cache)]
    found += [f"cgroup left: {c}" for c in cgroups if os.path.exists(c)]
    found += [f"process left: {pid} (root {os.readlink(f'/proc/{pid}/root')})" for pid in chroot.processes_under(cache)]
    return found


def run_all(userlands: list[Userland], jobs: int, test_jobs: int = 1) -> None:
    """At most `jobs` userlands in flight (being made and set up, or tested), at most
    `test_jobs` of them in their tests at once, each tested as its root is ready. Measured here:
    set-up and the suite each keep about one core busy, so on 2 cores --jobs 2 makes the next
    root while the tests of the last run. jobs 1: one after the other, each test run on a quiet
    host."""
    if jobs <= 1:
        for userland in userlands:
            userland.result = userland.prepare().test()
        return
    slots = threading.Semaphore(jobs)  # taken when a userland starts, given back when its tests end

    def prepare(userland: Userland) -> Userland:
        slots.acquire()
        return userland.prepare()

    def test(userland: Userland) -> None:
        try:
            userland.result = userland.test()
        finally:
            slots.release()

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, test_jobs)) as testers:
        futures = [pool.submit(prepare, u) for u in userlands]
        tests = []
        try:
            for future in concurrent.futures.as_completed(futures):
                tests.append(testers.submit(test, future.result()))
            for done in tests:
                done.result()
        except BaseException:  # the pools' exits wait for their threads: end their commands first
            chroot.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            testers.shutdown(wait=False, cancel_futures=True)
            for _ in futures:  # and wake the ones waiting for a slot (chroot.Stopped ends them)
                slots.release()
            raise


def prepare_all(userlands: list[Userland], jobs: int) -> int:
    """Only debootstrap, extraction and set-up, `jobs` at once; 0 when every set-up passed."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        try:
            ready = list(pool.map(lambda userland: userland.prepare(), userlands))
        except BaseException:
            chroot.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    for userland in ready:
        print(f"userlands: {userland.spec.suite}: prepared, setup.sh exit {userland.setup['exit']} "
              f"({userland.setup.get('prepare_seconds', 0):.0f} s)", flush=True)
    return 0 if all(u.setup["exit"] == 0 for u in ready) else 1


def _stop_on_signal(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    try:
        bootstrap, specs = load()
        chosen = select(specs, args.suites)
        args.cache = os.path.abspath(args.cache)
        cgroup2 = preflight(args.cache)
        held = lock(args.cache)
    except UserlandError as err:
        print(f"userlands: {err}", file=sys.stderr)
        return 2
    userlands = [Userland(spec, bootstrap, args, cgroup2) for spec in chosen]
    started = time.monotonic()
    if args.prepare_only:
        try:
            code = prepare_all(userlands, args.jobs)
        finally:
            left = leftovers(args.cache, [os.path.join(cgroup2, cgroup_name(args.cache, s.suite)) for s in chosen])
            held.close()
        for problem in left:
            print(f"userlands: LEFT ON THE HOST: {problem}", file=sys.stderr)
        return 1 if left else code
    try:
        run_all(userlands, args.jobs, args.test_jobs)
    except BaseException:  # Ctrl-C, SIGTERM: every namespace started goes with its first process
        chroot.stop()
        raise
    finally:
        left = leftovers(args.cache, [os.path.join(cgroup2, cgroup_name(args.cache, s.suite)) for s in chosen])
        held.close()
    rows = []
    for userland in userlands:
        userland.keep(os.path.join(args.results, "userlands", userland.spec.suite))
        row = table.userland_row(userland.spec.name, userland.spec.suite, userland.spec.engine, userland.result,
                                 userland.setup)
        rows.append(row)
        print(f"userlands: {row.suite}: engine {row.engine or '-'}, tests {row.passed} passed / {row.failed} failed / "
              f"{row.skipped} skipped: {'ok' if row.ok else 'FAIL'}", flush=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
            "kernel": platform.release(), "tests": list(args.tests), "jobs": args.jobs, "test_jobs": args.test_jobs,
            "seconds": round(time.monotonic() - started, 1)}
    label = f"{meta['when']} at {meta['commit']}"
    rows = [dataclasses.replace(r, run=label) for r in rows]
    meta["runs"] = {label: {"tests": list(args.tests)}}
    os.makedirs(args.results, exist_ok=True)
    previous_path = os.path.join(args.results, "userlands.json")
    if args.update and os.path.exists(previous_path):
        with open(previous_path, encoding="utf-8") as handle:
            rows, meta = table.merge(json.load(handle), rows, meta, [s.name for s in specs])
    text = table.markdown(rows, meta)
    record = table.as_json(rows, meta)
    with open(os.path.join(args.results, "userlands.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(previous_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    print(text)
    for problem in left:
        print(f"userlands: LEFT ON THE HOST: {problem}", file=sys.stderr)
    bad = sum(not r.ok for r in rows)
    print(f"userlands: {len(rows)} userlands, {bad} not ok, {meta['seconds']:.0f} s; table in "
          f"{os.path.join(args.results, 'userlands.md')}")
    return 0 if record["ok"] and not left else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"userlands: stopped ({stop or 'Ctrl-C'}); every chroot it started has ended", file=sys.stderr)
        sys.exit(130)
