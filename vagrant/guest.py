"""What runs inside a matrix guest, as root: `python -m vagrant.guest <run dir>/job.json`.

The guest shares the host's root read-only (virtme-ng), so everything it writes goes to tmpfs
mounts of its own or to the run directory (shared read-write). The guest is thrown away after,
so mounting over /tmp or /usr/src or adding an interface here never reaches the host.
Each step records what it saw in result.json as it goes, so a guest that dies mid-way still
leaves the steps it finished for the table.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from engine import registry
from vagrant import table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EBPF_FLAGS = ["--experimental-transparent-proxy-engine", "--ebpf-enabled"]
NFTABLES_FLAGS = ["--nftables-enabled"]
NFTABLES_CHOICE = "nftables-choice.txt"  # its dry run, beside choice.txt (matrix.ARTEFACTS keeps it)
# The guest has no NIC (no user-mode network: the tests make their own namespaces); the eBPF
# engine wants an up interface with an address for tc, so the guest gets a dummy one.
DUMMY = ("tpctl-matrix0", "198.18.255.1/24")


def sh(argv: list[str], timeout: int = 120, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(argv, 124, err.stdout or "", f"timed out after {timeout} s")


def prepare(job: dict) -> list[str]:
    """Cached views of /usr and the checkout, tmpfs where tools write, headers where BCC looks,
    the dummy interface. Returns the problems met (a row with problems fails)."""
    run_dir, repo = os.path.dirname(os.path.abspath(job["path"])), REPO
    # the host's /usr/src and the kernel's headers, listed before /usr/src is covered
    links = {name: os.path.join(directory, name)
             for directory in ("/usr/src", job["usr_src"]) for name in sorted(os.listdir(directory))}
    steps = [["mkdir", "-p", "/run/tpctl-root", "/run/tpctl-run"],
             # boot.CACHED_ROOT: the same host root, read-only, with the guest's page cache
             ["mount", "-t", "9p", "-o", "ro,trans=virtio,version=9p2000.L,cache=loose,msize=524288",
              job["cached_root_tag"], "/run/tpctl-root"],
             ["mount", "--bind", run_dir, "/run/tpctl-run"],
             ["mount", "--bind", "/run/tpctl-root/usr", "/usr"],
             ["mount", "--bind", "/run/tpctl-root" + repo, repo],
             ["mount", "--bind", "/run/tpctl-run", run_dir],  # the shared run dir, uncovered again
             # virtme's /lib/modules tmpfs was under the old /usr: the same again, on the new one
             ["mount", "-t", "tmpfs", "tmpfs", "/usr/lib/modules"],
             ["ln", "-s", job["moddir"], f"/usr/lib/modules/{job['release']}"],
             ["mount", "-t", "tmpfs", "tmpfs", "/tmp"],
             ["mount", "-t", "tmpfs", "tmpfs", "/usr/src"]]
    problems = []
    for argv in steps:
        result = sh(argv)
        if result.returncode:
            problems.append(f"{' '.join(argv)}: {result.stderr.strip()}")
    # /lib/modules/<release>/{build,source} point at /usr/src/linux-headers-<release>{,-common}
    for name, target in links.items():
        os.symlink(target, os.path.join("/usr/src", name))
    name, address = DUMMY
    for argv in (["ip", "link", "add", name, "type", "dummy"], ["ip", "addr", "add", address, "dev", name],
                 ["ip", "link", "set", name, "up"]):
        result = sh(argv)
        if result.returncode:
            problems.append(f"{' '.join(argv)}: {result.stderr.strip()}")
    return problems


def tpctl(*args: str, setarch: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    argv = [os.path.join(os.path.dirname(sys.executable), "tpctl"), *args]
    if setarch:
        # a real OS facility: uname(2) reports 2.6.x to the command and its children
        argv = ["setarch", platform.machine(), "--uname-2.6", *argv]
    return sh(argv, timeout=timeout)


# install's reasons (engine.contract.RedirectEngine): "<flag> and every <title> check passed",
# "<flag>, but <title> checks failed; falling back to <title>: [FAIL] ...; [FAIL] ..." (one per
# requested engine that failed, the last naming the engine chosen), "<title> engine (the default; ...)"
_PASSED = re.compile(r" and every (.+) check passed$")
_FELL_BACK = re.compile(r" checks failed; falling back to (.+?): \[FAIL\]")
_FAIL_LINE = re.compile(r"\[FAIL\] .*?(?=; \[FAIL\] |$)")
_DEFAULT = re.compile(r"^(.+) engine \(the default; ")


def engine_of(stderr: str) -> tuple[str, list[str]]:
    """The engine install chose and every check it fell back past, from its `# reason` lines."""
    reasons = [line[2:] for line in stderr.splitlines() if line.startswith("# ")]
    by_title = {e.title: e.name for e in registry.engines()}
    # a check's detail is free text (nft's first error line) that may hold "; ": split only where
    # the next [FAIL] starts
    failed = [line.strip() for r in reasons for m in [_FELL_BACK.search(r)] if m
              for line in _FAIL_LINE.findall(r, m.end() - len("[FAIL]"))]
    passed = [m.group(1) for r in reasons for m in [_PASSED.search(r)] if m]
    fell_to = [m.group(1) for r in reasons for m in [_FELL_BACK.search(r)] if m]
    default = [m.group(1) for r in reasons for m in [_DEFAULT.search(r)] if m]
    title = next(iter(passed or fell_to[-1:] or default), None)
    if title in by_title:
        return by_title[title], failed
    return "unknown", reasons


def choice(out: str) -> dict:
    """What `install --ebpf-enabled --dry-run` chooses here, plus the probe record."""
    state = os.path.join("/tmp", "tpctl-choice-state")
    result = tpctl("install", *EBPF_FLAGS, "--dry-run", "--state-dir", state)
    engine, failed = engine_of(result.stderr)
    status = tpctl("status", "--json", "--state-dir", state)
    with open(os.path.join(out, "status.json"), "w", encoding="utf-8") as handle:
        handle.write(status.stdout or status.stderr)
    with open(os.path.join(out, "choice.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"$ tpctl install {' '.join(EBPF_FLAGS)} --dry-run  (exit {result.returncode})\n"
                     f"{result.stderr}\n{result.stdout}")
    record = sh([sys.executable, "-c", PROBE_RECORD], timeout=600, cwd=REPO)
    with open(os.path.join(out, "probe.json"), "w", encoding="utf-8") as handle:
        handle.write(record.stdout or json.dumps({"error": record.stderr[-2000:]}))
    return {"engine": engine, "failed_checks": failed, "exit": result.returncode,
            "release": platform.release(), "status_exit": status.returncode}


def nftables_choice(out: str) -> dict:
    """What `install --nftables-enabled --dry-run` chooses here: its check `nf_tables takes the
    table` has this kernel judge (and abort) the very table, so the choice is the kernel's answer."""
    state = os.path.join("/tmp", "tpctl-nftables-choice-state")
    result = tpctl("install", *NFTABLES_FLAGS, "--dry-run", "--state-dir", state)
    engine, failed = engine_of(result.stderr)
    with open(os.path.join(out, NFTABLES_CHOICE), "w", encoding="utf-8") as handle:
        handle.write(f"$ tpctl install {' '.join(NFTABLES_FLAGS)} --dry-run  (exit {result.returncode})\n"
                     f"{result.stderr}\n{result.stdout}")
    return {"engine": engine, "failed_checks": failed, "exit": result.returncode}


# The probe record: HostFacts and the Choice with every check, as install --ebpf-enabled sees them.
PROBE_RECORD = """
import json
from engine import config
from engine.apply import decide
facts, choice = decide(config.build({"ebpf_enabled": True, "experimental_transparent_proxy_engine": True,
                                     "dry_run": True}))
print(json.dumps({"host": facts.to_json(), "choice": choice.to_json()}, indent=1, sort_keys=True, default=str))
"""


def fallback(spec: dict) -> dict:
    """A real install with --ebpf-enabled that must fall back, say why, and exit 3 with --no-fallback."""
    setarch = spec["condition"] == "uname-2.6"
    state = os.path.join("/tmp", f"tpctl-{spec['name']}-state")
    # port 22 excluded: on a Vagrant box (vagrant/box.py) this install is on the box's own network
    base = ["--kuma-dp-user", "5678", "--exclude-inbound-ports", "22", "--state-dir", state]
    installed = tpctl("install", *EBPF_FLAGS, *base, setarch=setarch)
    engine, failed = engine_of(installed.stderr)
    status = tpctl("status", "--json", "--state-dir", state, setarch=setarch)
    try:
        recorded = json.loads(status.stdout).get("engine")
    except ValueError:
        recorded = None
    removed = tpctl("uninstall", "--state-dir", state, setarch=setarch)
    strict = tpctl("install", *EBPF_FLAGS, "--no-fallback", *base, setarch=setarch)
    said_why = any(f"[FAIL] {spec['reason']}" in line for line in failed)
    ok = (installed.returncode == 0 and engine == spec["engine"] and recorded == spec["engine"] and said_why
          and removed.returncode == 0 and strict.returncode == 3 and f"[FAIL] {spec['reason']}" in strict.stderr)
    return {"name": spec["name"], "condition": spec["condition"], "release": platform.release(),
            "uname_seen": sh(["setarch", platform.machine(), "--uname-2.6", "uname", "-r"]).stdout.strip()
            if setarch else platform.release(),
            "engine": engine, "recorded_engine": recorded, "why": failed, "install_exit": installed.returncode,
            "uninstall_exit": removed.returncode, "no_fallback_exit": strict.returncode,
            "no_fallback_said": [line for line in strict.stderr.splitlines() if "[FAIL]" in line],
            "ok": ok, "install_stderr": installed.stderr[-3000:]}


def run_tests(job: dict, out: str) -> dict:
    junit = os.path.join(out, "junit.xml")
    # TPCTL_TIMEOUT_SCALE comes with os.environ: main() sets it for every step of the guest
    env = dict(os.environ, TPCTL_NO_SKIP="1", PYTHONDONTWRITEBYTECODE="1", HOME="/tmp", TMPDIR="/tmp")
    # the first read of every module comes over 9p; do it once before the first scene's clock runs
    sh([sys.executable, "-c", "import bcc, pytest, engine.cli, engine.apply, sandbox.peers, "
        "sandbox.sidecar, ebpf.engine"], timeout=600, env=env, cwd=REPO)
    started = time.monotonic()
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
            "-v", "-ra", "--durations=0", f"--junitxml={junit}", *job["tests"]]
    with open(os.path.join(out, "pytest.log"), "w", encoding="utf-8") as log:  # written as it runs
        try:
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=job["tests_timeout"],
                                  env=env, cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            code = 124
            log.write(f"\nvagrant.guest: pytest killed after {job['tests_timeout']} s\n")
    seconds = round(time.monotonic() - started, 1)
    if os.path.exists(junit):
        return {**junit_counts(junit), "exit": code, "seconds": seconds, "failures": junit_failures(junit)}
    with open(os.path.join(out, "pytest.log"), encoding="utf-8", errors="replace") as log:
        return table.tests_from_log(log.read(), code, seconds)


def junit_counts(path: str) -> dict:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def junit_failures(path: str) -> list[str]:
    names = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.append(f"{case.get('classname')}::{case.get('name')}")
    return names


def main(job_path: str) -> int:
    with open(job_path, encoding="utf-8") as handle:
        job = dict(json.load(handle), path=job_path)
    out = os.path.dirname(job_path)
    result: dict = {"kernel": job["name"], "release": platform.release()}
    # tpctl's own subprocess limits (engine/timeouts.py) for the choice and fallback installs too,
    # not only for the tests: their first iptables commit on a slow TCG kernel takes minutes
    os.environ["TPCTL_TIMEOUT_SCALE"] = str(job.get("timeout_scale", 8))

    def save() -> None:
        with open(os.path.join(out, "result.json.tmp"), "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, sort_keys=True)
        os.replace(os.path.join(out, "result.json.tmp"), os.path.join(out, "result.json"))

    started = time.monotonic()
    result["prepare_problems"] = prepare(job)
    save()
    if job.get("choice", True):
        result["choice"] = choice(out)
        save()
        result["nftables_choice"] = nftables_choice(out)
        save()
    result["fallbacks"] = []
    for spec in job.get("fallbacks", []):
        result["fallbacks"].append(fallback(spec))
        save()
    if job.get("tests"):
        result["tests"] = run_tests(job, out)
    result["guest_seconds"] = round(time.monotonic() - started, 1)
    result["done"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
