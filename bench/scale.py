"""Connection rate against the size of the exclusion set, per engine.

For each size N: N excluded outbound ports (20000 up) and N excluded CIDRs (/30s of
198.19.0.0/16), passed in one --config file. Neither covers the measured traffic (srv:80), so
every new connection is still redirected and, under iptables, first walks every exclusion rule
(one rule per CIDR in nat OUTPUT, one per port in TPCTL_OUTBOUND); the nftables engine looks
both up in the interval sets of `table inet tpctl`, the eBPF engine in a hash and an LPM trie.
Before measuring, the installed rule, set element or map entry counts are read back from the
kernel and checked against N, so a size that did not land cannot produce a number. Each
install is timed (wall time of `tpctl install --config FILE`).

The nftables engine's target (target() below): at 10,000 + 10,000 exclusions its connection
rate at most 5% below its rate at 10 + 10, and its install at 10,000 + 10,000 within 0.5 s;
the other engines' figures for the same two sizes are reported beside it.
"""
from __future__ import annotations

from bench import configs, stats
from bench.cases import CASES
from bench.measure import Measurer
from bench.stack import Stack, StackError

PORT_RULE = "tpctl/exclude outbound traffic from port "
CIDR_RULE_PREFIX = "-A OUTPUT -d " + str(configs.EXCLUDED_CIDR_POOL.network_address).rsplit(".", 2)[0] + "."
NFT_PORTS_SET, NFT_V4_SET = "exclude_outbound_ports", "exclude_outbound_ipv4"  # in table inet tpctl

TARGET_ENGINE = "nftables"
TARGET_SIZES = (10, 10000)       # the rate at the second size against the first
TARGET_MAX_DROP = 0.05           # at most 5% fewer connections/s
TARGET_INSTALL_S = 0.5           # tpctl install at the second size, wall time (median)
COMPARED = ("iptables-nft", "ebpf")  # shown beside the target engine


def installed_exclusions(stack: Stack, engine: str) -> tuple[int, int]:
    """(excluded ports, excluded IPv4 CIDRs) as the kernel holds them now."""
    if engine == "ebpf":
        return stack.bpf_map_entries("tp_excl_out_ports"), stack.bpf_map_entries("tp_excl_out_v4")
    if engine == "nftables":
        return stack.nft_set_elements(NFT_PORTS_SET), stack.nft_set_elements(NFT_V4_SET)
    return count_rules(stack.iptables_rules(engine))


def count_rules(nat_save: str) -> tuple[int, int]:
    lines = nat_save.splitlines()
    ports = sum(1 for line in lines if line.startswith("-A TPCTL_OUTBOUND") and PORT_RULE in line)
    cidrs = sum(1 for line in lines if line.startswith(CIDR_RULE_PREFIX) and "-j RETURN" in line)
    return ports, cidrs


def run(stack: Stack, measurer: Measurer, engines: list[str], sizes: list[int], rounds: int,
        say=print) -> dict:
    """{engine: {size: {metric: [values per round]}}}; sizes interleaved with engines."""
    files = {size: stack.write_file(f"exclusions-{size}.yaml", configs.exclusion_config(size)) for size in sizes}
    out: dict = {engine: {str(size): {} for size in sizes} for engine in engines}
    for round_no in range(1, rounds + 1):
        for size in sizes:
            for engine in engines:
                say(f"scale round {round_no}/{rounds}: {engine} with {size} excluded ports and CIDRs")
                with stack.installed(engine, "--config", files[size]) as done:
                    held = installed_exclusions(stack, engine)
                    if held != (size, size):
                        raise StackError(f"{engine}: asked to exclude {size} ports and {size} CIDRs, the kernel "
                                         f"holds {held[0]} and {held[1]}")
                    figures = measurer.new_connections(CASES[engine])
                figures.update(install_s=done["install"].wall_s, install_maxrss_mib=done["install"].maxrss_kib / 1024,
                               uninstall_s=done["uninstall"].wall_s)
                for metric, value in figures.items():
                    out[engine][str(size)].setdefault(metric, []).append(value)
    return out


def _median(scale: dict, engine: str, size: int, key: str) -> float | None:
    summary = stats.summarize(scale.get(engine, {}).get(str(size), {}).get(key, []))
    return None if summary is None else summary.median


def target(scale: dict) -> dict | None:
    """The nftables target from a sweep's results (medians per size, the sizes of TARGET_SIZES):
    {"met": bool, "rate_met": bool | None, "install_met": bool | None, "missing": [what has no figure],
     "engines": {engine: {"rate_small", "rate_large", "rate_ratio", "install_large"}}}, the target
    engine first, then COMPARED where the sweep ran them; None without the target engine."""
    if TARGET_ENGINE not in scale:
        return None
    small, large = TARGET_SIZES
    engines = {}
    for engine in (TARGET_ENGINE, *COMPARED):
        if engine not in scale:
            continue
        rate_small, rate_large = (_median(scale, engine, size, "conn_rate") for size in (small, large))
        engines[engine] = {"rate_small": rate_small, "rate_large": rate_large,
                           "rate_ratio": rate_large / rate_small if rate_small and rate_large is not None else None,
                           "install_large": _median(scale, engine, large, "install_s")}
    mine = engines[TARGET_ENGINE]
    missing = [f"conn/s at {size:,} + {size:,}" for size, key in ((small, "rate_small"), (large, "rate_large"))
               if mine[key] is None]
    if mine["install_large"] is None:
        missing.append(f"install at {large:,} + {large:,}")
    rate_met = None if mine["rate_ratio"] is None else mine["rate_ratio"] >= 1 - TARGET_MAX_DROP
    install_met = None if mine["install_large"] is None else mine["install_large"] <= TARGET_INSTALL_S
    return {"met": rate_met is True and install_met is True, "rate_met": rate_met, "install_met": install_met,
            "missing": missing, "engines": engines}
