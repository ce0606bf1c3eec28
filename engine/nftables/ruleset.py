"""Config -> one nftables table, `table inet tpctl`: the same redirect as the iptables engine's
rules (engine/iptables/builder.py), written natively. Pure: the host contributes only the
families and the name servers, as arguments.

What differs from the iptables rules, and why:
- Exclusions are named interval sets, one lookup per packet whatever their size, where iptables
  walks one rule per port and per CIDR. Ports-for-uids is one concatenated set
  (protocol . port . uid) whose elements the planner makes disjoint, as the kernel requires.
- One inet table holds both families. IPv4-only installs begin every base chain with
  `meta nfproto ipv6 return`, so IPv6 meets nothing of ours (iptables: no ip6tables rules).
- Base-chain priorities stand for iptables' append and insert: our nat chains run after
  iptables' nat chains at the same hook (-100, where iptables-nft, iptables-legacy and Docker's
  DNAT sit), so a foreign DNAT (Docker's published ports) keeps winning as it does over
  kumactl's appended jumps; --redirect-*-insert-instead-of-append puts the chain before them.
  The conntrack-zone chains run after iptables' raw (-300) and before conntrack (-200); the
  invalid-packet drop after conntrack and iptables' mangle (-150).
- Comments are short (nft keeps at most 128 bytes), and none with --disable-comments.
"""
from __future__ import annotations

import ipaddress
import socket
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from engine.contract import Config

FAMILY, NAME = "inet", "tpctl"
TABLE = f"{FAMILY} {NAME}"
DNS_PORT = 53
NAT_APPEND, NAT_INSERT = -90, -110  # iptables' nat chains (and Docker's) are at -100
NAT_FIRST = -120  # what kumactl inserts at the top of nat OUTPUT: before everything else
RAW = -290  # after iptables' raw (-300), before conntrack (-200): zones are set before tracking
MANGLE = -140  # after conntrack (-200) and iptables' mangle (-150): the INVALID state is known
COMMENT_MAX = 128  # bytes nft keeps of a rule comment
PASSTHROUGH = {4: "127.0.0.6", 6: "::6"}
LOCALHOST = {4: "127.0.0.1", 6: "::1"}
IP = {4: "ip", 6: "ip6"}


@dataclass(frozen=True)
class NftSet:
    name: str
    type: str  # nft's type expression, e.g. "inet_service" or "inet_proto . inet_service . uid"
    elements: tuple[str, ...]

    def lines(self) -> list[str]:
        out = [f"\tset {self.name} {{", f"\t\ttype {self.type}", "\t\tflags interval"]
        if self.elements:
            out.append("\t\telements = { " + ", ".join(self.elements) + " }")
        return out + ["\t}"]


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...]
    kind: str | None = None  # "nat" | "filter" for a base chain, None for a regular one
    hook: str | None = None
    priority: int | None = None

    def lines(self) -> list[str]:
        out = [f"\tchain {self.name} {{"]
        if self.kind:
            out.append(f"\t\ttype {self.kind} hook {self.hook} priority {self.priority}; policy accept;")
        return out + [f"\t\t{rule}" for rule in self.rules] + ["\t}"]


@dataclass(frozen=True)
class Table:
    sets: tuple[NftSet, ...]
    chains: tuple[Chain, ...]
    families: tuple[int, ...]

    def definition(self) -> str:
        body: list[str] = []
        parts: list[NftSet | Chain] = [*self.sets, *self.chains]
        for part in parts:
            if body:
                body.append("")
            body += part.lines()
        return "\n".join([f"table {TABLE} {{", *body, "}"]) + "\n"

    def script(self) -> str:
        """What `nft -f` is given: one transaction that replaces our table (or makes it)."""
        return replacing(self.definition())

    def sample(self) -> Table:
        """The same table with at most one element per set: what the kernel's features decide
        (every chain, expression and set type), checked at a fraction of the full parse."""
        return replace(self, sets=tuple(replace(s, elements=s.elements[:1]) for s in self.sets))

    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains)

    def summary(self) -> dict:
        return {"chains": {c.name: len(c.rules) for c in self.chains},
                "sets": {s.name: len(s.elements) for s in self.sets}}


def replacing(definition: str) -> str:
    """`definition` (ours, or a listing of our table) as one transaction replacing the table:
    `table` makes it if absent, `delete` drops whatever it held, the definition remakes it; the
    kernel commits the three at once, so no packet sees the table missing or half-written."""
    return f"table {TABLE}\ndelete table {TABLE}\n{definition}"


@dataclass(frozen=True)
class Inputs:
    """What the host contributes: the families installed and each one's name servers."""

    families: tuple[int, ...]
    dns_servers: dict  # family -> tuple of addresses (resolv.conf's, of that family)


def disjoint_networks(networks: Iterable) -> list:
    """The networks without those inside another (an interval set refuses overlaps); adjacent
    ones stay separate elements, so each excluded CIDR is one element."""
    kept: list = []
    last_end = -1
    # duplicates need no set (hashing 10,000 networks costs more than the sort): each starts
    # inside its twin and is skipped below
    spans = sorted((int(n.network_address), n.prefixlen, n) for n in networks)
    for start, prefixlen, net in spans:  # integers: ipaddress' own comparisons cost 10x more
        if start <= last_end:  # starts inside the last kept one: prefixes nest, so it lies inside
            continue
        kept.append(net)
        last_end = start + (1 << (net.max_prefixlen - prefixlen)) - 1
    return kept


def _element(net) -> str:
    """A network as a set element: a bare address for a host, else address/prefix (IPv4 through
    inet_ntoa: ipaddress' str() is the slowest part of rendering 10,000 CIDRs)."""
    if net.version == 4:
        address = socket.inet_ntoa(int(net.network_address).to_bytes(4, "big"))
    else:
        address = str(net.network_address)
    return address if net.prefixlen == net.max_prefixlen else f"{address}/{net.prefixlen}"


def merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive ranges, overlapping and adjacent ones joined."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def ports_for_uids_elements(entries) -> tuple[str, ...]:
    """`protocol . ports . uids` elements, pairwise disjoint (the kernel refuses overlapping
    concatenated ranges): per protocol, uid ranges are cut where any entry's range begins or
    ends, each piece gets the union of the ports of the entries covering it, and neighbouring
    pieces with the same ports are joined again. One entry stays one element per port range."""
    elements: list[str] = []
    for proto in ("tcp", "udp"):
        groups = [(e.uid_range, e.port_ranges) for e in entries if proto in e.protocols]
        elements += [f"{proto} . {_span(*ports)} . {_span(lo, hi)}" for lo, hi, rs in _uid_pieces(groups)
                     for ports in rs]
    return tuple(elements)


def _uid_pieces(groups: list) -> list[tuple[int, int, tuple]]:
    """One sweep along the uid axis (n log n): at each cut the entries that begin there join
    the active port ranges and those that ended leave; a piece's ports are the merged active
    ranges. Config parsing bounds the overlap (engine/values.py), so the merges stay small."""
    opening: dict[int, list] = defaultdict(list)
    closing: dict[int, list] = defaultdict(list)
    for (lo, hi), port_ranges in groups:
        opening[lo] += port_ranges
        closing[hi + 1] += port_ranges
    cuts = sorted(opening.keys() | closing.keys())
    active: Counter = Counter()
    pieces: list[tuple[int, int, tuple]] = []
    for start, end in zip(cuts, cuts[1:]):
        active.subtract(closing.get(start, ()))
        active.update(opening.get(start, ()))
        active += Counter()  # drops the ranges no entry covers any more
        if not active:
            continue
        ports = tuple(merged(active))
        if pieces and pieces[-1][1] == start - 1 and pieces[-1][2] == ports:
            pieces[-1] = (pieces[-1][0], end - 1, ports)
        else:
            pieces.append((start, end - 1, ports))
    return pieces


class _Planner:
    def __init__(self, config: Config, inputs: Inputs):
        self.c = config
        self.fams = inputs.families
        self.servers = {f: tuple(inputs.dns_servers.get(f, ())) for f in self.fams}
        self.uid = config.proxy_uid
        self.sets: list[NftSet] = []
        # families whose DNS is redirected (as iptables: per family, only where there is a server)
        self.dns = tuple(f for f in self.fams if config.dns_enabled and (config.capture_all_dns or self.servers[f]))

    def rule(self, *parts: str, comment: str = "") -> str:
        text = " ".join(p for p in parts if p)
        if comment and not self.c.disable_comments:
            assert len(comment.encode()) <= COMMENT_MAX, comment
            text += f' comment "{comment}"'
        return text

    def only(self, families: tuple[int, ...]) -> str:
        """A match for `families` where they are not all the installed ones ("" where they are)."""
        if set(families) == set(self.fams):
            return ""
        return " ".join(f"meta nfproto ipv{f}" for f in families)  # one family: others met nothing

    def set_of(self, name: str, kind: str, elements: Iterable[str]) -> str | None:
        """Add a named set and return its reference; None (no set, no rule) when empty."""
        elements = tuple(elements)
        if not elements:
            return None
        if all(s.name != name for s in self.sets):  # a set used by two chains is defined once
            self.sets.append(NftSet(name, kind, elements))
        return "@" + name

    def address_set(self, name: str, family: int, networks: Iterable) -> str | None:
        nets = [n for n in networks if n.version == family]
        kind = "ipv4_addr" if family == 4 else "ipv6_addr"
        return self.set_of(f"{name}_ipv{family}", kind, map(_element, disjoint_networks(nets)))

    def guard(self) -> list[str]:
        """IPv4-only installs: IPv6 packets leave every base chain at once."""
        if 6 in self.fams:
            return []
        return [self.rule("meta nfproto ipv6 return", comment="IPv4-only install: IPv6 is not redirected")]

    def log(self, prefix: str) -> list[str]:
        if not self.c.iptables_logs:
            return []
        return [self.rule(f'log prefix "{prefix}:" level debug', comment="log matching packets")]

    # -- nat --------------------------------------------------------------------------------
    def prerouting(self) -> Chain:
        c = self.c
        rules = [*self.guard(), *self.log("PREROUTING")]
        for family in self.fams:
            by_iface = {vn.interface: vn for vn in c.vnet if vn.network.version == family}  # as iptables
            for iface in sorted(by_iface):
                name = iface.replace("+", "*")  # iptables' wildcard is nft's
                rules.append(self.rule(f'meta nfproto ipv{family} iifname "{name}" udp dport {DNS_PORT}',
                                       f"redirect to :{c.redirect_dns_port}",
                                       comment=f"DNS on {iface} to the DNS proxy"))
                rules.append(self.rule(f'iifname "{name}" {IP[family]} daddr != {by_iface[iface].network}',
                                       f"meta l4proto tcp redirect to :{c.redirect_outbound_port}",
                                       comment=f"TCP on {iface} not to {by_iface[iface].cidr} to the outbound port"))
        if c.redirect_inbound:
            rules.append(self.rule("meta l4proto tcp jump inbound", comment="inbound TCP"))
        priority = NAT_INSERT if c.redirect_inbound_insert_instead_of_append else NAT_APPEND
        return Chain("prerouting", tuple(rules), "nat", "prerouting", priority)

    def inbound(self) -> list[Chain]:
        if not self.c.redirect_inbound:
            return []
        rules = []
        for family in self.fams:
            found = self.address_set("exclude_inbound", family, self.c.exclude_inbound_ips)
            if found:
                rules.append(self.rule(f"{IP[family]} saddr {found} return", comment="excluded source addresses"))
        included = self.set_of("include_inbound_ports", "inet_service", map(str, sorted(self.c.include_inbound_ports)))
        if included:  # only these (as Kuma's includePorts)
            rules.append(self.rule(f"tcp dport {included} jump inbound_redirect", comment="included inbound ports"))
            return [Chain("inbound", tuple(rules))]
        ports = self.set_of("exclude_inbound_ports", "inet_service", map(str, sorted(self.c.exclude_inbound_ports)))
        if ports:
            rules.append(self.rule(f"tcp dport {ports} return", comment="excluded inbound ports"))
        rules.append(self.rule("jump inbound_redirect", comment="the rest to the inbound port"))
        return [Chain("inbound", tuple(rules))]

    def inbound_redirect(self) -> Chain:
        return Chain("inbound_redirect", (self.rule(f"meta l4proto tcp redirect to :{self.c.redirect_inbound_port}",
                                                    comment="to the proxy's inbound port"),))

    def exclusions(self) -> list[str]:
        """kumactl's inserted OUTPUT exclusions (ports for uids, destinations), as returns."""
        c = self.c
        rules = []
        found = self.set_of("exclude_outbound_ports_for_uids", "inet_proto . inet_service . uid",
                            ports_for_uids_elements(c.exclude_outbound_ports_for_uids))
        if found:
            rules.append(self.rule(f"meta l4proto . th dport . meta skuid {found} return",
                                   comment="excluded ports of excluded uids"))
        for family in self.fams:
            found = self.address_set("exclude_outbound", family, c.exclude_outbound_ips)
            if found:
                rules.append(self.rule(f"{IP[family]} daddr {found} return", comment="excluded destinations"))
        return rules

    def output_first(self) -> list[Chain]:
        """What kumactl inserts at the top of nat OUTPUT, in a chain before iptables' (-100): the
        LOG rule, the exclusions and the DNS redirect. So the app's DNS to a local resolver goes
        to the DNS proxy before Docker's DNAT to its embedded DNS (127.0.0.11) could take it, and
        kuma-dp's own DNS, which returns here, still meets that DNAT: what kumactl's jump to
        DOCKER_OUTPUT does, without looking for the chain."""
        c, uid = self.c, self.uid
        if not self.dns and not c.iptables_logs:
            return []
        rules = [*self.guard(), *self.log("OUTPUT"), *self.exclusions()]
        dns = self.only(self.dns)
        if self.dns:
            rules.append(self.rule(dns, f"udp dport {DNS_PORT} meta skuid {uid} return",
                                   comment="DNS from the proxy itself (Docker's embedded DNS still DNATs it)"))
            if c.capture_all_dns:
                rules.append(self.rule(dns, f"udp dport {DNS_PORT} redirect to :{c.redirect_dns_port}",
                                       comment="all DNS to the DNS proxy"))
            else:
                for family in self.dns:
                    servers = self.address_set("dns_servers", family, (ipaddress.ip_network(s) for s in self.servers[family]))
                    rules.append(self.rule(f"{IP[family]} daddr {servers} udp dport {DNS_PORT}",
                                           f"redirect to :{c.redirect_dns_port}",
                                           comment="DNS to the resolv.conf servers to the DNS proxy"))
        return [Chain("output_first", tuple(rules), "nat", "output", NAT_FIRST)]

    def output(self) -> Chain:
        """The appended jump (inserted with --redirect-outbound-insert-instead-of-append): the
        exclusions again (a return in another base chain does not end this one; the sets are shared)."""
        c, uid = self.c, self.uid
        rules = [*self.guard(), *self.exclusions()]
        dns = self.only(self.dns)
        jump = self.rule("meta l4proto tcp jump outbound", comment="outbound TCP")
        tcp_dns = [self.rule(dns, f"tcp dport {DNS_PORT} meta skuid != {uid} return",
                             comment="applications' DNS over TCP is not redirected")] if self.dns else []
        rules += [jump, *tcp_dns] if c.redirect_outbound_insert_instead_of_append else [*tcp_dns, jump]
        priority = NAT_INSERT if c.redirect_outbound_insert_instead_of_append else NAT_APPEND
        return Chain("output", tuple(rules), "nat", "output", priority)

    def outbound(self) -> Chain:
        c, uid = self.c, self.uid
        if not c.redirect_outbound:
            return Chain("outbound", (self.rule("return", comment="outbound redirection is disabled"),))
        rules = []
        ports = self.set_of("exclude_outbound_ports", "inet_service", map(str, sorted(c.exclude_outbound_ports)))
        if ports:
            rules.append(self.rule(f"tcp dport {ports} return", comment="excluded outbound ports"))
        rules += [self.rule(f'oifname "lo" {IP[f]} saddr {PASSTHROUGH[f]} return',
                            comment="the proxy's passthrough to the app is not redirected again")
                  for f in self.fams]
        rules += [self.rule(f'oifname "lo" {IP[f]} daddr != {LOCALHOST[f]} meta skuid {uid} jump inbound_redirect',
                            comment="the proxy reaching a local address goes to its inbound port")
                  for f in self.fams]
        rules.append(self.rule(f'oifname "lo" meta skuid != {uid} return',
                               comment="other users' loopback traffic is not redirected"))
        rules.append(self.rule(f"meta skuid {uid} return", comment="the proxy's own traffic is not redirected"))
        rules += [self.rule(f"{IP[f]} daddr {LOCALHOST[f]} return", comment="localhost is not redirected")
                  for f in self.fams]
        included = self.set_of("include_outbound_ports", "inet_service", map(str, sorted(c.include_outbound_ports)))
        if included:  # only these (as Kuma's includePorts)
            rules.append(self.rule(f"tcp dport {included} redirect to :{c.redirect_outbound_port}",
                                   comment="included outbound ports to the proxy's outbound port"))
        else:
            rules.append(self.rule(f"meta l4proto tcp redirect to :{c.redirect_outbound_port}",
                                   comment="the rest to the proxy's outbound port"))
        return Chain("outbound", tuple(rules))

    # -- conntrack zones keep the proxy's own DNS queries apart from the app's ----------------
    def zones(self) -> list[Chain]:
        c, uid = self.c, self.uid
        if not self.dns or c.skip_dns_conntrack_zone_split:
            return []
        dns = self.only(self.dns)
        out = [self.rule(dns, f"udp dport {DNS_PORT} meta skuid {uid} ct zone set 1",
                         comment="zone 1: the proxy's DNS queries"),
               self.rule(dns, f"udp sport {c.redirect_dns_port} meta skuid {uid} ct zone set 2",
                         comment="zone 2: the DNS proxy's answers")]
        pre = []
        if c.capture_all_dns:
            pre.append(self.rule(dns, f"udp sport {DNS_PORT} ct zone set 1", comment="zone 1: DNS answers"))
            out.append(self.rule(dns, f"udp dport {DNS_PORT} ct zone set 2", comment="zone 2: DNS queries"))
        else:
            loopback = []
            for family in self.dns:
                servers = f"@dns_servers_ipv{family}"
                pre.append(self.rule(f"{IP[family]} saddr {servers} udp sport {DNS_PORT} ct zone set 1",
                                     comment="zone 1: answers of the resolv.conf servers"))
                out.append(self.rule(f"{IP[family]} daddr {servers} udp dport {DNS_PORT} ct zone set 2",
                                     comment="zone 2: queries to the resolv.conf servers"))
                loopback += [self.rule(f"{IP[family]} saddr {s} {IP[family]} daddr {LOCALHOST[family]}",
                                       "meta l4proto udp ct zone set 1",
                                       comment="zone 1: a local DNS server's answers (DNAT as in Docker networks)")
                             for s in self.servers[family] if ipaddress.ip_address(s).is_loopback]
            out += loopback
        return [Chain("zone_prerouting", (*self.guard(), *pre), "filter", "prerouting", RAW),
                Chain("zone_output", (*self.guard(), *out), "filter", "output", RAW)]

    def invalid(self) -> list[Chain]:
        if not self.c.drop_invalid_packets:
            return []
        return [Chain("drop_invalid", (*self.guard(), self.rule("ct state invalid drop",
                                                                  comment="packets conntrack marks INVALID")),
                      "filter", "prerouting", MANGLE)]

    def table(self) -> Table:
        # chains are planned before the table is made: planning them adds the sets they use
        chains = [self.prerouting(), *self.inbound(), self.inbound_redirect(), *self.output_first(), self.output(),
                  self.outbound(),
                  *self.zones(), *self.invalid()]
        return Table(tuple(self.sets), tuple(chains), self.fams)


def build(config: Config, inputs: Inputs) -> Table:
    return _Planner(config, inputs).table()
