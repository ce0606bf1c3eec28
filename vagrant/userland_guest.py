"""What runs inside a userland root, as root: `.venv/bin/python -m vagrant.userland_guest JOB`.

vagrant/userlands.py starts it chrooted in the root (in private mount, pid and network
namespaces, see vagrant/chroot.py) after scripts/setup.sh made the root's .venv. It records the
root's versions, what `install --ebpf-enabled --dry-run` chooses there (vagrant/guest.py's
choice(), as in the kernel matrix) and runs the test suite (guest.run_tests()), writing
result.json as each step ends, so a killed run still shows the steps it finished. Runs on the
root's own Python, 3.9 included.
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time

from vagrant import guest

PACKAGES = ("python3-bpfcc", "libbpfcc", "iptables", "haproxy", "linux-headers-amd64")


def upstream(version: str) -> str:
    """Debian's version without epoch and revision: '1:2.6.12-1+deb12u1' -> '2.6.12',
    '0.26.0+ds-1' -> '0.26.0'."""
    version = version.split(":", 1)[-1]
    version = version.rsplit("-", 1)[0] if "-" in version else version
    return re.split(r"[+~]", version)[0]


def llvm_of(depends: str) -> str:
    """The LLVM major that libbpfcc links, from its Depends (libllvm14, libclang-cpp14, libclang1-11)."""
    for pattern in (r"\blibllvm(\d+)\b", r"\blibclang-cpp(\d+)\b", r"\blibclang1-(\d+)\b"):
        found = re.search(pattern, depends)
        if found:
            return found.group(1)
    return "?"


def iptables_of(text: str) -> str:
    """'iptables v1.8.9 (nf_tables)' -> '1.8.9 (nf_tables)'."""
    found = re.search(r"v(\d+(?:\.\d+)+)(?:\s+\((\w+)\))?", text)
    if not found:
        return "?"
    return found.group(1) + (f" ({found.group(2)})" if found.group(2) else "")


def haproxy_of(text: str) -> str:
    """'HAProxy version 2.6.12-1+deb12u1 2023/12/16 - https://haproxy.org/' -> '2.6.12'."""
    found = re.search(r"HA-?Proxy version (\d+(?:\.\d+)+)", text)
    return found.group(1) if found else "?"


def dpkg_fields(text: str) -> dict[str, dict[str, str]]:
    """`dpkg-query -W -f '${Package}\\t${Version}\\t${Depends}\\n'` output -> {package: fields}."""
    fields = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1]:
            fields[parts[0]] = {"version": parts[1], "depends": parts[2] if len(parts) > 2 else ""}
    return fields


def _out(argv: list[str]) -> str:
    result = guest.sh(argv, timeout=60)
    return (result.stdout + result.stderr).strip()


def versions() -> dict:
    """What the table shows of this root, each with the raw text it came from."""
    dpkg = dpkg_fields(guest.sh(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Depends}\n", *PACKAGES],
                                timeout=60).stdout)
    raw = {"iptables": _out(["iptables", "--version"]), "haproxy": _out(["haproxy", "-v"]).split("\n")[0]}
    try:
        with open("/etc/debian_version", encoding="utf-8") as handle:
            debian = handle.read().strip()
    except OSError:
        debian = "?"
    build = f"/lib/modules/{platform.release()}/build"
    return {"debian": debian, "python": platform.python_version(),
            "bcc": upstream(dpkg.get("python3-bpfcc", {}).get("version", "?")),
            "llvm": llvm_of(dpkg.get("libbpfcc", {}).get("depends", "")),
            "iptables": iptables_of(raw["iptables"]), "haproxy": haproxy_of(raw["haproxy"]),
            "headers": os.path.basename(os.path.realpath(build)) if os.path.exists(build) else "none",
            "packages": {name: f["version"] for name, f in dpkg.items()}, "raw": raw}


def main(job_path: str) -> int:
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    out = os.path.dirname(os.path.abspath(job_path))
    result: dict = {"suite": job["suite"], "release": platform.release()}
    # tpctl's and the sandbox's time limits (engine/timeouts.py) for the choice and the tests
    os.environ["TPCTL_TIMEOUT_SCALE"] = str(job.get("timeout_scale", 1))

    def save() -> None:
        with open(os.path.join(out, "result.json.tmp"), "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, sort_keys=True)
        os.replace(os.path.join(out, "result.json.tmp"), os.path.join(out, "result.json"))

    started = time.monotonic()
    result["versions"] = versions()
    save()
    result["choice"] = guest.choice(out)
    save()
    result["tests"] = guest.run_tests(job, out)
    result["guest_seconds"] = round(time.monotonic() - started, 1)
    result["done"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
