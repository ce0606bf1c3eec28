"""Plan time per engine against the size of the exclusions: pure, no root, no kernel.

For each size N the configuration excludes N outbound ports (20000 up), N IPv4 CIDRs (/30s of
198.19.0.0/16) and N ports-for-uids entries (one port, one uid each; eBPF's uid map holds at
most MAX_UID_RANGES rules, so its column plans that many). Each cell is the best of a few runs
(CPU time) of what `tpctl install` does after the choice: engine.plan() and the rendered plan (the
iptables-restore input, the nft script, the map writes). Run: .venv/bin/python -m bench.planner
"""
from __future__ import annotations

import sys
import time

from bench import configs
from ebpf.maps import MAX_UID_RANGES
from engine import config as config_module
from engine import registry
from engine import values as v
from engine.contract import Choice
from engine.probe import Backend, HostFacts

SIZES = (10, 1000, 10000)
ENGINES = (("iptables", "nft"), ("nftables", None), ("ebpf", None))
RUNS = 3


def facts() -> HostFacts:
    """A dualstack host with both iptables backends, a cgroup2 mount and one up interface."""
    return HostFacts("6.1.0", "/sys/fs/cgroup", (), (Backend("legacy", True, 0), Backend("nft", True, 0)),
                     "nf_tables", {}, ("2001:2::1",), dns_servers=("198.18.0.53",), dns_servers_error=None,
                     interfaces=({"name": "eth0", "index": 2, "up": True, "addresses": ["198.18.0.1"]},))


def config_of(size: int, engine: str) -> config_module.Config:
    uids = min(size, MAX_UID_RANGES) if engine == "ebpf" else size
    explicit = {
        "kuma_dp_user": v.ProxyUser(5678, "kuma-dp"),
        "exclude_outbound_ports": v.port_list(configs.excluded_ports(size)),
        "exclude_outbound_ips": v.network_list(configs.excluded_cidrs(size)),
        "exclude_outbound_ports_for_uids": v.ports_for_uids_list([f"tcp:{1 + i % 60000}:{10000 + i}"
                                                                  for i in range(uids)]),
        "redirect_dns": True,
        "ebpf_enabled": engine == "ebpf",
        "nftables_enabled": engine == "nftables",
    }
    return config_module.build(explicit)


def plan_seconds(engine_name: str, backend: str | None, size: int) -> float:
    engine = registry.get(engine_name)
    assert engine is not None, engine_name
    config, host = config_of(size, engine_name), facts()
    choice = Choice(engine_name, backend, (4, 6), (), (), "restore" if backend else None)
    best = float("inf")
    for _ in range(RUNS):
        if hasattr(engine, "_planned"):
            engine._planned = None  # the engines keep their last plan: measure planning, not the cache
        start = time.process_time()  # CPU time: planning is pure, other load on the machine does not count
        engine.plan(config, host, choice).render()
        best = min(best, time.process_time() - start)
    return best


def table(results: dict[str, dict[int, float]]) -> str:
    head = f"{'engine':<10}" + "".join(f"{f'{n:,} entries':>16}" for n in SIZES)
    rows = [f"{name:<10}" + "".join(f"{cells[n] * 1000:>14.1f}ms" for n in SIZES) for name, cells in results.items()]
    note = (f"entries: N excluded ports + N CIDRs + N ports-for-uids (eBPF: at most {MAX_UID_RANGES} "
            "ports-for-uids rules); plan and render, CPU time, best of 3")
    return "\n".join([head, *rows, note])


def main() -> int:
    results = {name: {n: plan_seconds(name, backend, n) for n in SIZES} for name, backend in ENGINES}
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
