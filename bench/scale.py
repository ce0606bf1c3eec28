"""Connection rate against the size of the exclusion set, per engine.

For each size N: N excluded outbound ports (20000 up) and N excluded CIDRs (/30s of
198.19.0.0/16), passed in one --config file. Neither covers the measured traffic (srv:80), so
every new connection is still redirected and, under iptables, first walks every exclusion rule
(one rule per CIDR in nat OUTPUT, one per port in TPCTL_OUTBOUND); the eBPF engine looks both
up in a hash and an LPM trie. Before measuring, the installed rule or map entry counts are
checked against N, so a size that did not land cannot produce a number.
"""
from __future__ import annotations

from bench import configs
from bench.cases import CASES
from bench.measure import Measurer
from bench.stack import Stack, StackError

PORT_RULE = "tpctl/exclude outbound traffic from port "
CIDR_RULE_PREFIX = "-A OUTPUT -d " + str(configs.EXCLUDED_CIDR_POOL.network_address).rsplit(".", 2)[0] + "."


def installed_exclusions(stack: Stack, engine: str) -> tuple[int, int]:
    """(excluded ports, excluded IPv4 CIDRs) as the kernel holds them now."""
    if engine == "ebpf":
        return stack.bpf_map_entries("tp_excl_out_ports"), stack.bpf_map_entries("tp_excl_out_v4")
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
