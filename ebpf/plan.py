"""plan(settings) -> EbpfPlan: pure data (no kernel access), rendered for --dry-run."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from engine.contract import EnginePlan

from .catalogue import (
    ATTACH_TYPE_NAMES,
    HOOK_CGROUP,
    HOOK_SK_MSG,
    HOOK_TC_EGRESS,
    HOOK_TC_INGRESS,
    PROGRAMS,
    SOCKHASH_MAP,
    Program,
)
from .errors import EbpfError
from .maps import DNS_MODES, MAX_CIDRS, MAX_UID_RANGES, PROTOS
from .pins import pin_dir
from .settings import EbpfSettings


class EbpfPlanError(EbpfError):
    """The settings cannot be expressed in the maps (names the offending setting)."""


@dataclass(frozen=True)
class MapWrite:
    map: str
    entries: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Attachment:
    program: str
    hook: str                 # HOOK_*
    target: str               # cgroup path, interface name, or map name (sk_msg)
    attach_type: int | None


@dataclass(frozen=True)
class EbpfPlan(EnginePlan):
    settings: EbpfSettings
    programs: tuple[Program, ...]
    maps: tuple[MapWrite, ...]
    attachments: tuple[Attachment, ...]
    pin_dir: str

    def render(self) -> str:
        s = self.settings
        out = [f"# tpctl eBPF plan: sources {s.programs_source_path}",
               f"bpffs {s.bpffs_path} (mounted if needed), pins under {self.pin_dir}/"]
        for prog in self.programs:
            opt = " (optional)" if prog.optional else ""
            out.append(f"program {prog.name} from {prog.source} pin prog_{prog.name}{opt}")
        for mw in self.maps:
            for key, value in mw.entries:
                out.append(f"map {mw.map} [{_fmt(key)}] = {_fmt(value)}")
        for att in self.attachments:
            kind = ATTACH_TYPE_NAMES[att.attach_type] if att.attach_type is not None \
                else f"clsact {att.hook.removeprefix('tc-')}, direct-action"
            out.append(f"attach {att.program} {att.hook} {att.target} ({kind})")
        return "\n".join(out) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={v[k]}" for k in v)
    return str(v)


def _port(name: str, p: int) -> int:
    if not 0 < int(p) < 65536:
        raise EbpfPlanError(f"{name}: port {p} out of range 1-65535")
    return int(p)


def _cidrs(name: str, cidrs: tuple[str, ...], version: int) -> tuple[tuple[str, int], ...]:
    out = []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError as exc:
            raise EbpfPlanError(f"{name}: {exc}") from exc
        if net.version == version:
            out.append((str(net), 1))
    if len(out) > MAX_CIDRS:
        raise EbpfPlanError(f"{name}: {len(out)} IPv{version} CIDRs, the eBPF map holds at most {MAX_CIDRS}")
    return tuple(out)


def _addrs(name: str, addrs: tuple[str, ...], version: int) -> tuple[tuple[str, int], ...]:
    out = []
    for a in addrs:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError as exc:
            raise EbpfPlanError(f"{name}: {exc}") from exc
        if ip.version == version:
            out.append((str(ip), 1))
    return tuple(out)


def _uid_ranges(s: EbpfSettings) -> tuple[tuple[int, dict], ...]:
    rules = s.exclude_outbound_ports_for_uids
    if len(rules) > MAX_UID_RANGES:
        raise EbpfPlanError(f"exclude_outbound_ports_for_uids: at most {MAX_UID_RANGES} rules")
    out = []
    for i, (proto, port_lo, port_hi, uid_lo, uid_hi) in enumerate(rules):
        if proto not in PROTOS:
            raise EbpfPlanError(f"exclude_outbound_ports_for_uids: protocol {proto!r} "
                                "(eBPF handles tcp and udp)")
        out.append((i, {"uid_lo": uid_lo, "uid_hi": uid_hi, "port_lo": _port("ports", port_lo),
                        "port_hi": _port("ports", port_hi), "proto": PROTOS[proto]}))
    return tuple(out)


# ARPHRD_* -> bytes before the IP header at tc on such an interface. Only types whose layout is
# the same on every kernel: anything else is refused, not guessed. ipip, sit, ip6tnl and GRE
# (768, 776, 769, 778) are left out on purpose: at tc ingress the kernel may show the outer IP
# header before the inner one (docs/ebpf-packets.md).
L2_LEN_BY_LINK_TYPE = {
    1: 14,       # ARPHRD_ETHER: Ethernet, veth, bridges, bonds, macvlan, tap, VXLAN
    772: 14,     # ARPHRD_LOOPBACK: lo carries an Ethernet header
    65534: 0,    # ARPHRD_NONE: tun, WireGuard
}


def _l3_iface(s: EbpfSettings) -> int:
    """1 when the tc interface has no link header, 0 for Ethernet (and when tc is not used).
    0 means Ethernet so that new programs on an older install's settings, until the settings
    are rewritten, parse as the old ones did."""
    if not (s.redirect_inbound and s.tc_iface):
        return 0
    if s.tc_link_type in L2_LEN_BY_LINK_TYPE:
        return int(L2_LEN_BY_LINK_TYPE[s.tc_link_type] == 0)
    what = "cannot be read (no such interface)" if s.tc_link_type is None \
        else f"is {s.tc_link_type}, whose header layout the tc programs do not know"
    raise EbpfPlanError(f"tc_iface: the link type (ARPHRD) of {s.tc_iface} {what}; known: "
                        f"{', '.join(str(k) for k in sorted(L2_LEN_BY_LINK_TYPE))}")


def wanted(prog: Program, s: EbpfSettings) -> bool:
    return {"core": True, "dns": s.redirect_dns != "off",
            "inbound": s.redirect_inbound and s.tc_iface is not None,
            "accel": s.accel}[prog.feature]


def plan(s: EbpfSettings) -> EbpfPlan:
    if s.redirect_dns not in DNS_MODES:
        raise EbpfPlanError(f"redirect_dns: {s.redirect_dns!r} is not one of off/servers/all")
    settings_value = {
        "proxy_uid": s.proxy_uid, "inbound_port": _port("inbound_port", s.inbound_port),
        "outbound_port": _port("outbound_port", s.outbound_port),
        "dns_port": _port("dns_port", s.dns_port), "redirect_inbound": int(s.redirect_inbound),
        "redirect_dns": DNS_MODES[s.redirect_dns], "ipv6": int(s.ipv6), "accel": int(s.accel),
        "uid_range_count": len(s.exclude_outbound_ports_for_uids), "l3_iface": _l3_iface(s),
    }
    maps = (
        MapWrite("tp_settings", ((0, settings_value),)),
        MapWrite("tp_excl_out_ports", tuple((_port("exclude_outbound_ports", p), 1)
                                            for p in s.exclude_outbound_ports)),
        MapWrite("tp_excl_in_ports", tuple((_port("exclude_inbound_ports", p), 1)
                                           for p in s.exclude_inbound_ports)),
        MapWrite("tp_excl_out_v4", _cidrs("exclude_outbound_cidrs", s.exclude_outbound_cidrs, 4)),
        MapWrite("tp_excl_out_v6", _cidrs("exclude_outbound_cidrs", s.exclude_outbound_cidrs, 6)),
        MapWrite("tp_excl_in_v4", _cidrs("exclude_inbound_cidrs", s.exclude_inbound_cidrs, 4)),
        MapWrite("tp_excl_in_v6", _cidrs("exclude_inbound_cidrs", s.exclude_inbound_cidrs, 6)),
        MapWrite("tp_uid_port_excl", _uid_ranges(s)),
        MapWrite("tp_dns_v4", _addrs("dns_servers", s.dns_servers, 4)),
        MapWrite("tp_dns_v6", _addrs("dns_servers", s.dns_servers, 6)),
        MapWrite("tp_instance_v4", _addrs("instance_ips", s.instance_ips, 4)),
        MapWrite("tp_instance_v6", _addrs("instance_ips", s.instance_ips, 6)),
    )
    programs = tuple(p for p in PROGRAMS if wanted(p, s))
    # sk_msg first: a socket gets the verdict program only if it is attached before sockops
    # adds the socket; getsockopt and sockops before connect so no redirected connection
    # misses its tuple.
    order = {HOOK_SK_MSG: 0, HOOK_CGROUP: 1, HOOK_TC_INGRESS: 2, HOOK_TC_EGRESS: 3}
    cg_order = ["tp_getsockopt", "tp_sockops"]
    atts = []
    for prog in sorted(programs, key=lambda p: (order[p.hook], p.name not in cg_order,
                                                 cg_order.index(p.name) if p.name in cg_order else 0)):
        target = {HOOK_SK_MSG: SOCKHASH_MAP, HOOK_CGROUP: s.cgroup_path}.get(
            prog.hook, s.tc_iface or "")
        atts.append(Attachment(prog.name, prog.hook, target, prog.attach_type))
    return EbpfPlan(s, programs, maps, tuple(atts), pin_dir(s.bpffs_path))
