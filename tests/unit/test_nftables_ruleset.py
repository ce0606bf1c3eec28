"""The nftables engine's planning (pure): the table from a Config, the disjoint set elements the
kernel requires, the priorities beside iptables, and the choice among three engines."""
from __future__ import annotations

import ipaddress
import random
import re
import time

import pytest

from engine import config as config_module
from engine import values as v
from engine.choice import Check, choose
from engine.nftables.redirect import drift, plan_for
from engine.nftables.ruleset import (
    COMMENT_MAX,
    NAT_APPEND,
    NAT_INSERT,
    Inputs,
    build,
    disjoint_networks,
    merged,
    ports_for_uids_elements,
)
from tests.unit.test_choice import facts

MANY = {"redirect_all_dns_traffic": True, "exclude_outbound_ports": (1, 22), "exclude_inbound_ports": (4444,),
        "exclude_outbound_ips": v.network_list("10.0.0.1,fd00::/8"), "exclude_inbound_ips": v.network_list("192.168.0.0/16"),
        "exclude_outbound_ports_for_uids": v.ports_for_uids_list("53,3000-5000:106-108"),
        "vnet": v.vnet_list("br+:172.18.0.0/16"), "iptables_logs": True, "drop_invalid_packets": True}


def config(**explicit):
    return config_module.build({"kuma_dp_user": v.ProxyUser(5678, None), **explicit})


def table(fams=(4, 6), servers=None, **explicit):
    return build(config(**explicit), Inputs(fams, servers or {}))


def chain(t, name):
    return next(c for c in t.chains if c.name == name)


def test_the_default_table_redirects_both_ways_and_excludes_the_proxy():
    t = table()
    assert [c.name for c in t.chains] == ["prerouting", "inbound", "inbound_redirect", "output", "outbound"]
    assert t.sets == ()  # no exclusions, no sets
    out = chain(t, "outbound").rules
    assert out[-1].startswith("meta l4proto tcp redirect to :15001")
    assert any(r.startswith("meta skuid 5678 return") for r in out)
    assert any(r.startswith('oifname "lo" ip6 saddr ::6 return') for r in out)
    assert chain(t, "inbound_redirect").rules[0].startswith("meta l4proto tcp redirect to :15006")


def test_exclusions_are_one_rule_each_over_a_set_whatever_their_size():
    small = table(exclude_outbound_ports=(9001,), exclude_outbound_ips=v.network_list("198.19.0.0/30"))
    big = table(exclude_outbound_ports=tuple(range(20000, 30000)),
                exclude_outbound_ips=tuple(ipaddress.ip_network(f"198.19.{i // 64}.{(i % 64) * 4}/30")
                                           for i in range(10000)))
    assert small.rule_count() == big.rule_count()
    sizes = {s.name: len(s.elements) for s in big.sets}
    assert sizes == {"exclude_outbound_ipv4": 10000, "exclude_outbound_ports": 10000}


def test_insert_flags_put_our_nat_chains_before_iptables_and_the_default_after():
    t = table()
    assert chain(t, "prerouting").priority == chain(t, "output").priority == NAT_APPEND > -100
    t = table(redirect_inbound_insert_instead_of_append=True)
    assert chain(t, "prerouting").priority == NAT_INSERT < -100 and chain(t, "output").priority == NAT_APPEND
    t = table(redirect_outbound_insert_instead_of_append=True, redirect_dns=True)
    out = chain(table(redirect_outbound_insert_instead_of_append=True, redirect_dns=True, fams=(4,),
                      servers={4: ("198.18.0.53",)}), "output").rules
    assert chain(t, "output").priority == NAT_INSERT
    jump = next(i for i, r in enumerate(out) if "jump outbound" in r)
    tcp_dns = next(i for i, r in enumerate(out) if r.startswith("tcp dport 53"))
    assert jump < tcp_dns  # as iptables: the jump inserted before the DNS-over-TCP return


def test_ipv4_only_leaves_ipv6_at_the_top_of_every_base_chain_and_names_no_ipv6_address():
    t = table(fams=(4,), **MANY)
    for c in t.chains:
        if c.kind:
            assert c.rules[0].startswith("meta nfproto ipv6 return"), c
    text = t.definition()
    assert " ip6 " not in text and "fd00::" not in text and "_ipv6" not in text
    assert not any(c.rules[0].startswith("meta nfproto") for c in table(**MANY).chains)


def test_dns_of_one_family_only_is_marked_with_that_family():
    t = table(redirect_dns=True, servers={4: ("198.18.0.53",), 6: ()})
    out = chain(t, "output_first").rules
    assert any(r.startswith("meta nfproto ipv4 udp dport 53 meta skuid 5678 return") for r in out)
    assert any(r.startswith("ip daddr @dns_servers_ipv4 udp dport 53 redirect to :15053") for r in out)
    zones = chain(t, "zone_output").rules
    assert zones[0].startswith("meta nfproto ipv4 udp dport 53 meta skuid 5678 ct zone set 1")
    assert {s.name for s in t.sets} == {"dns_servers_ipv4"}
    assert "zone_output" not in [c.name for c in table(redirect_dns=True).chains]  # no server, no DNS rules


def test_dns_and_exclusions_come_before_iptables_nat_and_the_exclusions_hold_in_both_chains():
    """kumactl inserts its DNS and exclusion rules at the top of nat OUTPUT: before Docker's DNAT
    to 127.0.0.11. A return in one base chain does not end the next: both chains exclude."""
    t = table(redirect_dns=True, fams=(4,), servers={4: ("127.0.0.11",)}, exclude_outbound_ips=v.network_list("198.19.0.0/16"))
    first, late = chain(t, "output_first"), chain(t, "output")
    assert first.priority < -100 < late.priority
    assert [r for r in first.rules if "@exclude_outbound_ipv4" in r] and [r for r in late.rules if "@exclude_outbound_ipv4" in r]
    assert not [r for r in late.rules if "redirect to :15053" in r]
    assert [s.name for s in t.sets].count("exclude_outbound_ipv4") == 1
    assert "output_first" not in [c.name for c in table().chains]  # no DNS, no log: nothing to insert


def test_include_ports_redirect_only_those_in_both_directions():
    t = table(include_inbound_ports=(8080,), include_outbound_ports=(9000, 9002))
    assert chain(t, "inbound").rules[-1].startswith("tcp dport @include_inbound_ports jump inbound_redirect")
    assert chain(t, "outbound").rules[-1].startswith("tcp dport @include_outbound_ports redirect to :15001")
    assert not any(r.startswith("meta l4proto tcp redirect") for r in chain(t, "outbound").rules)
    assert {s.name: s.elements for s in t.sets} == {"include_inbound_ports": ("8080",),
                                                    "include_outbound_ports": ("9000", "9002")}


def test_a_loopback_name_server_gets_the_docker_network_zone_rule():
    t = table(redirect_dns=True, fams=(4,), servers={4: ("127.0.0.11",)})
    assert any(r.startswith("ip saddr 127.0.0.11 ip daddr 127.0.0.1 meta l4proto udp ct zone set 1")
               for r in chain(t, "zone_output").rules)


def test_every_flag_changes_the_table_and_comments_fit_or_go():
    t = table(**MANY)
    names = [c.name for c in t.chains]
    assert names[-3:] == ["zone_prerouting", "zone_output", "drop_invalid"]
    pre = chain(t, "prerouting").rules
    assert pre[0].startswith('log prefix "PREROUTING:" level debug')
    assert any(r.startswith('iifname "br*" ip daddr != 172.18.0.0/16 meta l4proto tcp redirect to :15001')
               for r in pre)
    comments = re.findall(r'comment "([^"]*)"', t.definition())
    assert comments and all(len(c.encode()) <= COMMENT_MAX for c in comments)
    assert "comment" not in table(disable_comments=True, **MANY).definition()


def test_disjoint_networks_drops_the_contained_and_keeps_the_adjacent():
    nets = v.network_list("10.0.0.0/8,10.1.0.0/16,10.0.0.1,11.0.0.0/30,11.0.0.4/30,11.0.0.4/30")
    assert [str(n) for n in disjoint_networks(nets)] == ["10.0.0.0/8", "11.0.0.0/30", "11.0.0.4/30"]
    assert merged([(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]


def _members(elements):
    out = []
    for element in elements:
        proto, ports, uids = element.split(" . ")
        lo, _, hi = ports.partition("-")
        ulo, _, uhi = uids.partition("-")
        out.append((proto, int(lo), int(hi or lo), int(ulo), int(uhi or ulo)))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_ports_for_uids_elements_are_disjoint_and_cover_exactly_the_entries(seed):
    rng = random.Random(seed)
    texts = []
    for _ in range(rng.randint(1, 6)):
        proto = rng.choice(["tcp", "udp", "*"])
        a, b = sorted(rng.sample(range(1, 40), 2))
        c, d = sorted(rng.sample(range(0, 12), 2))
        texts.append(f"{proto}:{a}-{b},{rng.randint(1, 40)}:{c}-{d}")
    entries = v.ports_for_uids_list(texts)
    members = _members(ports_for_uids_elements(entries))
    for i, one in enumerate(members):  # the kernel refuses overlapping concatenated ranges
        for other in members[i + 1:]:
            assert not (one[0] == other[0] and one[1] <= other[2] and other[1] <= one[2]
                        and one[3] <= other[4] and other[3] <= one[4]), (one, other, texts)
    for proto in ("tcp", "udp"):
        for port in range(1, 42):
            for uid in range(0, 13):
                wanted = any(proto in e.protocols and e.uid_range[0] <= uid <= e.uid_range[1]
                             and any(lo <= port <= hi for lo, hi in e.port_ranges) for e in entries)
                got = any(m[0] == proto and m[1] <= port <= m[2] and m[3] <= uid <= m[4] for m in members)
                assert wanted == got, (proto, port, uid, texts)


def test_ten_thousand_ports_for_uids_entries_plan_well_under_a_second():
    """One sweep along the uid axis: the planner cut the ranges against every entry per piece."""
    rng = random.Random(22)
    entries = v.ports_for_uids_list([f"{rng.choice(['tcp', 'udp', '*'])}:{rng.randint(1, 65000)}:"
                                     f"{rng.randint(1000, 900000)}" for _ in range(6000)]
                                    + [f"{1 + i % 60000}:{5000 + i}-{5040 + i}" for i in range(4000)])
    start = time.process_time()  # CPU time: other work on the machine does not count
    elements = ports_for_uids_elements(entries)
    assert time.process_time() - start < 1.0
    assert len(elements) >= 10000


def test_one_entry_is_one_element_per_port_range():
    assert ports_for_uids_elements(v.ports_for_uids_list("tcp:53,3000-5000:106-108")) == (
        "tcp . 53 . 106-108", "tcp . 3000-5000 . 106-108")


def test_the_plan_renders_one_transaction_that_replaces_the_table():
    plan = plan_for(config(redirect_dns=True), facts(), (4,))
    assert plan.render().startswith("table inet tpctl\ndelete table inet tpctl\ntable inet tpctl {\n")
    assert plan.warnings == ("--redirect-dns: no IPv4 name server in /etc/resolv.conf; IPv4 DNS is not redirected",)


def test_drift_names_the_lines_that_changed():
    assert drift("a\nb\n", "a\nb\n") == [] and drift(None, "x") == []
    assert drift("a\n", None) == ["nftables table inet tpctl is missing"]
    [line] = drift("table {\n\tx return\n}\n", "table {\n\ty return\n}\n")
    assert "missing: x return" in line and "added: y return" in line


def test_nftables_is_asked_after_ebpf_and_falls_back_to_iptables_naming_the_check():
    failed = [Check("nf_tables takes the table", False, "Error: Could not process rule", "a newer kernel")]
    choice = choose(config(nftables_enabled=True), facts(), {"nftables": failed})
    assert choice.engine == "iptables" and "falling back to iptables" in choice.reasons[0]
    assert "Could not process rule" in choice.reasons[0]
    ok = [Check("nft", True, "/usr/sbin/nft")]
    assert choose(config(nftables_enabled=True), facts(), {"nftables": ok}).engine == "nftables"
    ebpf_failed = [Check("kernel", False, "release 4.15", "upgrade")]
    both = choose(config(ebpf_enabled=True, nftables_enabled=True), facts(), {"ebpf": ebpf_failed, "nftables": ok})
    assert both.engine == "nftables" and "falling back to nftables" in both.reasons[0]


def test_no_fallback_with_nftables_alone_is_allowed_and_alone_is_refused():
    assert config(nftables_enabled=True, no_fallback=True).no_fallback
    with pytest.raises(Exception, match="--no-fallback needs --ebpf-enabled or --nftables-enabled"):
        config(no_fallback=True)
