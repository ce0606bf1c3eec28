"""What the run was measured on: kernel, CPU, memory, tool versions, load. Read-only."""
from __future__ import annotations

import os
import platform
import re
import subprocess


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err})"
    text = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return text[0].strip() if text else "unavailable"


def _cpuinfo() -> tuple[str, bool]:
    model, hypervisor = "unknown", False
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and " hypervisor" in line:
                hypervisor = True
    return model, hypervisor


def _meminfo_gib() -> float:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _bcc_version() -> str:
    try:
        import bcc  # Debian's python3-bpfcc
    except ImportError:
        return "not importable"
    return getattr(bcc, "__version__", "unknown")


def tpctl_revision() -> str:
    """The checkout's commit, marked when the working tree differs from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = _first_line(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    return commit + (" + uncommitted changes" if changed else "")


def other_qemu_running() -> bool:
    """Whether a QEMU (another engineer's VM) is running: it would make the figures noisy."""
    return subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, timeout=10).returncode == 0


def nginx_version() -> tuple[int, ...]:
    """nginx's version as numbers ("nginx version: nginx/1.22.1" -> (1, 22, 1)); () if unknown."""
    found = re.search(r"nginx/(\d+(?:\.\d+)*)", _first_line(["nginx", "-v"]))
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def describe() -> dict[str, str]:
    model, hypervisor = _cpuinfo()
    with open("/proc/loadavg", encoding="ascii") as handle:
        load = " ".join(handle.read().split()[:3])
    versions = {
        "haproxy": _first_line(["haproxy", "-v"]),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": re.sub(r"\s+Copyright.*", "", _first_line(["wrk", "-v"])),
        "iperf3": _first_line(["iperf3", "--version"]),
        "iptables (nft)": _first_line(["iptables-nft", "--version"]),
        "iptables (legacy)": _first_line(["iptables-legacy", "--version"]),
        "nftables": _first_line(["nft", "--version"]),
        "bpftool": _first_line(["bpftool", "version"]),
        "BCC (python3-bpfcc)": _bcc_version(),
        "Python": platform.python_version(),
    }
    return {
        "tpctl": tpctl_revision(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": model + (" (virtual machine)" if hypervisor else ""),
        "cpus": f"{os.cpu_count()} online, {len(os.sched_getaffinity(0))} usable",
        "memory": f"{_meminfo_gib():.1f} GiB",
        "load average at start": load,
        "other QEMU VMs running at start": "yes (figures may be noisy)" if other_qemu_running() else "no",
        **versions,
    }
