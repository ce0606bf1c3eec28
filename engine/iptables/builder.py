"""Config -> iptables rules, equivalent to kumactl's (shared/peer/kuma/*.golden).

Pure: everything the host contributes (name servers, which matches exist) comes in as
arguments. Chains are TPCTL_*, comments "tpctl/..."; the comment texts are Kuma's, so a reader
who knows kumactl's rules recognises every line. One deliberate change: no apostrophes in
comments ("the envoy's port" -> "the envoy port"), because python-iptables stores "'" as "\\'"
and the legacy and nft backends would then disagree about the same rule.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from engine.config import Config
from engine.iptables.rules import CHAIN_PREFIX, FamilyPlan, Match, Option, Rule, TablePlan

INBOUND = CHAIN_PREFIX + "INBOUND"
INBOUND_REDIRECT = CHAIN_PREFIX + "INBOUND_REDIRECT"
OUTBOUND = CHAIN_PREFIX + "OUTBOUND"
OUTBOUND_REDIRECT = CHAIN_PREFIX + "OUTBOUND_REDIRECT"
DNS_PORT = 53
LOG_LEVEL = "7"


@dataclass(frozen=True)
class FamilyInputs:
    """What the host contributes to one family's rules (from HostFacts)."""

    family: int
    dns_servers: tuple[str, ...] = ()
    loopback: str = "lo"
    comments: bool = True  # the comment match is available
    conntrack_zones: bool = True  # the CT target can set zones
    docker_output: bool = False  # Docker's DOCKER_OUTPUT chain is in this family's nat table


def _tcp(port: int | str, negated: bool = False) -> Match:
    return Match("tcp", (Option("dport", str(port), negated),))


def _udp(option: str, port: int | str) -> Match:
    return Match("udp", (Option(option, str(port)),))


def _owner(uid: str | int, negated: bool = False) -> Match:
    return Match("owner", (Option("uid-owner", str(uid), negated),))


def _to_port(port: int) -> tuple[Option, ...]:
    return (Option("to-ports", str(port)),)


def _host(address: str, family: int) -> str:
    return str(ipaddress.ip_network(address, strict=False)) if "/" in address else \
        f"{address}/{32 if family == 4 else 128}"


class _Builder:
    def __init__(self, config: Config, inputs: FamilyInputs):
        self.c = config
        self.f = inputs
        self.v6 = inputs.family == 6
        self.localhost = "::1/128" if self.v6 else "127.0.0.1/32"
        self.passthrough = "::6/128" if self.v6 else "127.0.0.6/32"
        self.uid = config.proxy_uid
        name = config.kuma_dp_user.name
        self.user = f" ({name} user)" if name else ""
        self.dns_on = config.dns_enabled and (config.capture_all_dns or bool(inputs.dns_servers))

    def family_networks(self, networks) -> list:
        return [n for n in networks if n.version == self.f.family]

    # -- nat -------------------------------------------------------------------------------
    def output(self) -> list[Rule]:
        """nat OUTPUT: exclusions and DNS inserted at the top, then the jump to TPCTL_OUTBOUND."""
        c, uid = self.c, self.uid
        rules: list[Rule] = []
        if c.iptables_logs:
            rules.append(Rule("OUTPUT", "LOG", (Option("log-prefix", '"OUTPUT:"'), Option("log-level", LOG_LEVEL)),
                              comment="log matching packets using kernel logging"))
        skip = "skip further processing for configured IP addresses, ports and UIDs"
        for entry in c.exclude_outbound_ports_for_uids:
            for proto in entry.protocols:
                rules.append(Rule("OUTPUT", "RETURN", protocol=proto, comment=skip, matches=(
                    Match("multiport", (Option("dports", entry.ports),)), _owner(entry.uids))))
        for net in self.family_networks(c.exclude_outbound_ips):
            rules.append(Rule("OUTPUT", "RETURN", destination=str(net), comment=skip))
        if self.dns_on:
            # as kumactl: with Docker's embedded DNS (custom networks), kuma-dp's own queries go
            # to DOCKER_OUTPUT, which DNATs 127.0.0.11:53 to dockerd; a RETURN would skip it
            if self.f.docker_output:
                rules.append(Rule("OUTPUT", "DOCKER_OUTPUT", protocol="udp", matches=(_udp("dport", DNS_PORT), _owner(uid)),
                                  comment="redirect DNS traffic from kuma-dp to the DOCKER_OUTPUT chain"))
            else:
                rules.append(Rule("OUTPUT", "RETURN", protocol="udp", comment="return early for DNS traffic from kuma-dp",
                                  matches=(_udp("dport", DNS_PORT), _owner(uid))))
            port = c.redirect_dns_port
            if c.capture_all_dns:
                rules.append(Rule("OUTPUT", "REDIRECT", _to_port(port), protocol="udp", matches=(_udp("dport", DNS_PORT),),
                                  comment=f"redirect all DNS requests to the kuma-dp DNS proxy (listening on port {port})"))
            else:
                for server in self.f.dns_servers:
                    rules.append(Rule("OUTPUT", "REDIRECT", _to_port(port), destination=_host(server, self.f.family),
                                      protocol="udp", matches=(_udp("dport", DNS_PORT),),
                                      comment=f"redirect DNS requests to {server} to the kuma-dp DNS proxy "
                                              f"(listening on port {port})"))
        rules = [replace(r, position=i) for i, r in enumerate(rules, start=1)]
        jump = Rule("OUTPUT", OUTBOUND, protocol="tcp",
                    comment="redirect outbound TCP traffic to our custom chain for processing")
        if c.redirect_outbound_insert_instead_of_append:
            rules.append(replace(jump, position=len(rules) + 1))
        if self.dns_on:
            rules.append(Rule("OUTPUT", "RETURN", protocol="tcp", matches=(_tcp(DNS_PORT), _owner(uid, negated=True)),
                              comment="allow applications to perform DNS queries over TCP to port 53 without mesh "
                                      f"redirection (only traffic not owned by UID {uid}{self.user})"))
        if not c.redirect_outbound_insert_instead_of_append:
            rules.append(jump)
        return rules

    def prerouting(self) -> list[Rule]:
        c = self.c
        rules: list[Rule] = []
        if c.iptables_logs:
            rules.append(Rule("PREROUTING", "LOG", (Option("log-prefix", '"PREROUTING:"'),
                                                    Option("log-level", LOG_LEVEL)),
                              comment="log matching packets using kernel logging"))
        by_iface = {vn.interface: vn for vn in c.vnet if vn.network.version == self.f.family}
        position = 1
        for iface in sorted(by_iface):
            vn = by_iface[iface]
            rules.append(Rule("PREROUTING", "REDIRECT", _to_port(c.redirect_dns_port), in_interface=iface,
                              protocol="udp", matches=(_udp("dport", DNS_PORT),), position=position,
                              comment=f"redirect DNS requests on interface {iface} to the kuma-dp DNS proxy "
                                      f"(listening on port {c.redirect_dns_port})"))
            rules.append(Rule("PREROUTING", "REDIRECT", _to_port(c.redirect_outbound_port), destination=str(vn.network),
                              destination_negated=True, in_interface=iface, protocol="tcp", position=position + 1,
                              comment=f"redirect TCP traffic on interface {iface}, excluding destination {vn.cidr}, "
                                      f"to the envoy outbound passthrough port {c.redirect_outbound_port}"))
            position += 2
        if by_iface or c.redirect_inbound_insert_instead_of_append:
            rules.append(Rule("PREROUTING", INBOUND, protocol="tcp", position=position,
                              comment="redirect remaining TCP traffic to our custom chain for processing"))
        else:
            rules.append(Rule("PREROUTING", INBOUND, protocol="tcp",
                              comment="redirect inbound TCP traffic to our custom chain for processing"))
        return rules

    def inbound(self) -> list[Rule]:
        c = self.c
        if not c.redirect_inbound:
            return [Rule(INBOUND, "RETURN", protocol="tcp", comment="inbound traffic redirection is disabled")]
        rules = [Rule(INBOUND, "RETURN", source=str(net), comment="skip further processing for configured IP address")
                 for net in self.family_networks(c.exclude_inbound_ips)]
        if c.include_inbound_ports:  # as Kuma: only these, and no exclusions (config conflicts them)
            return rules + [Rule(INBOUND, INBOUND_REDIRECT, protocol="tcp", matches=(_tcp(port),),
                                 comment=f"redirect inbound traffic from port {port} to the custom chain for processing")
                            for port in c.include_inbound_ports]
        rules += [Rule(INBOUND, "RETURN", protocol="tcp", matches=(_tcp(port),),
                       comment=f"exclude inbound traffic from port {port} from redirection")
                  for port in c.exclude_inbound_ports]
        rules.append(Rule(INBOUND, INBOUND_REDIRECT, protocol="tcp",
                          comment="redirect all inbound traffic to the custom chain for processing"))
        return rules

    def outbound(self) -> list[Rule]:
        c, uid, lo = self.c, self.uid, self.f.loopback
        if not c.redirect_outbound:
            return [Rule(OUTBOUND, "RETURN", protocol="tcp", comment="outbound traffic redirection is disabled")]
        rules = [Rule(OUTBOUND, "RETURN", protocol="tcp", matches=(_tcp(port),),
                      comment=f"exclude outbound traffic from port {port} from redirection")
                 for port in c.exclude_outbound_ports]
        rules += [
            Rule(OUTBOUND, "RETURN", source=self.passthrough, out_interface=lo,
                 comment=f"prevent traffic loops by ensuring traffic from the sidecar proxy (using {self.passthrough}) "
                         "to loopback interface is not redirected again"),
            Rule(OUTBOUND, INBOUND_REDIRECT, destination=self.localhost, destination_negated=True, out_interface=lo,
                 protocol="tcp", matches=(_owner(uid),),
                 comment="redirect outbound TCP traffic destined for loopback interface, but not targeting address "
                         f"{self.localhost}, and owned by UID {uid}{self.user} to {INBOUND_REDIRECT} chain for "
                         "proper handling"),
            Rule(OUTBOUND, "RETURN", out_interface=lo, protocol="tcp", matches=(_owner(uid, negated=True),),
                 comment="return outbound TCP traffic destined for loopback interface, owned by any UID other than "
                         f"{uid}{self.user}"),
            Rule(OUTBOUND, "RETURN", matches=(_owner(uid),),
                 comment=f"return outbound traffic owned by UID {uid}{self.user}"),
            Rule(OUTBOUND, "RETURN", destination=self.localhost,
                 comment=f"return traffic destined for localhost ({self.localhost}) to avoid redirection"),
        ]
        if c.include_outbound_ports:  # as Kuma: only these go to the redirect chain
            return rules + [Rule(OUTBOUND, OUTBOUND_REDIRECT, protocol="tcp", matches=(_tcp(port),),
                                 comment=f"redirect outbound TCP traffic to port {port} to our custom chain for "
                                         "further processing") for port in c.include_outbound_ports]
        rules.append(Rule(OUTBOUND, OUTBOUND_REDIRECT,
                          comment="redirect all other outbound traffic to our custom chain for further processing"))
        return rules

    def redirect(self, chain: str, port: int) -> list[Rule]:
        return [Rule(chain, "REDIRECT", _to_port(port), protocol="tcp",
                     comment=f"redirect TCP traffic to envoy (port {port})")]

    def nat(self) -> TablePlan:
        rules = [*self.prerouting(), *self.output(), *self.inbound(),
                 *self.redirect(INBOUND_REDIRECT, self.c.redirect_inbound_port),
                 *self.outbound(), *self.redirect(OUTBOUND_REDIRECT, self.c.redirect_outbound_port)]
        return TablePlan("nat", (INBOUND, OUTBOUND, INBOUND_REDIRECT, OUTBOUND_REDIRECT), tuple(rules))

    # -- raw: conntrack zones keep the proxy's own DNS queries apart from the app's ----------
    def raw(self) -> TablePlan | None:
        c, uid = self.c, self.uid
        if not self.dns_on or c.skip_dns_conntrack_zone_split or not self.f.conntrack_zones:
            return None
        zone = lambda n: (Option("zone", str(n)),)  # noqa: E731 - a one-line helper reads best here
        pre: list[Rule] = []
        out = [
            Rule("OUTPUT", "CT", zone(1), protocol="udp", matches=(_udp("dport", DNS_PORT), _owner(uid)),
                 comment=f"assign connection tracking zone 1 to DNS traffic from the kuma-dp user (UID {uid})"),
            Rule("OUTPUT", "CT", zone(2), protocol="udp", matches=(_udp("sport", c.redirect_dns_port), _owner(uid)),
                 comment="assign connection tracking zone 2 to DNS responses from the kuma-dp DNS proxy"),
        ]
        if c.capture_all_dns:
            pre.append(Rule("PREROUTING", "CT", zone(1), protocol="udp", matches=(_udp("sport", DNS_PORT),),
                            comment="assign connection tracking zone 1 to all DNS responses"))
            out.append(Rule("OUTPUT", "CT", zone(2), protocol="udp", matches=(_udp("dport", DNS_PORT),),
                            comment="assign connection tracking zone 2 to all DNS requests"))
        else:
            for server in self.f.dns_servers:
                host = _host(server, self.f.family)
                pre.append(Rule("PREROUTING", "CT", zone(1), source=host, protocol="udp",
                                matches=(_udp("sport", DNS_PORT),),
                                comment=f"assign connection tracking zone 1 to DNS responses from {server}"))
                out.append(Rule("OUTPUT", "CT", zone(2), destination=host, protocol="udp",
                                matches=(_udp("dport", DNS_PORT),),
                                comment=f"assign connection tracking zone 2 to DNS requests destined for {server}"))
                if ipaddress.ip_address(server.split("/")[0]).is_loopback:
                    out.append(Rule("OUTPUT", "CT", zone(1), source=host, destination=self.localhost, protocol="udp",
                                    comment="assign conntrack zone 1 to DNS responses from the local DNS server to "
                                            "localhost, needed when the DNS query port is altered by a DNAT iptables "
                                            "rule, such as with Docker containers in a custom network"))
        return TablePlan("raw", (), tuple(pre + out))

    def mangle(self) -> TablePlan | None:
        if not self.c.drop_invalid_packets:
            return None
        return TablePlan("mangle", (), (Rule(
            "PREROUTING", "DROP", matches=(Match("conntrack", (Option("ctstate", "INVALID"),)),),
            comment="drop packets in the INVALID state to prevent potential issues with malformed or "
                    "out-of-order packets"),))


def build_family(config: Config, inputs: FamilyInputs) -> FamilyPlan:
    builder = _Builder(config, inputs)
    tables = [t for t in (builder.raw(), builder.nat(), builder.mangle()) if t is not None]
    if config.disable_comments or not inputs.comments:
        tables = [replace(t, rules=tuple(r.without_comment() for r in t.rules)) for t in tables]
    return FamilyPlan(inputs.family, tuple(tables))
