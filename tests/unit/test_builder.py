"""Rules for the flags the goldens do not cover, checked against kumactl's documented shapes."""
from __future__ import annotations

from engine import config as config_module
from engine import values as v
from engine.iptables.builder import FamilyInputs, build_family


def plan(family=4, servers=(), **explicit):
    config = config_module.build({"kuma_dp_user": v.ProxyUser(5678, "kuma-dp"), **explicit})
    return build_family(config, FamilyInputs(family, servers))


def lines(p, table="nat"):
    (t,) = [t for t in p.tables if t.name == table]
    return [line for line in t.save_view().splitlines() if line.startswith("-A")]


def test_redirect_dns_only_to_the_family_servers():
    p = plan(4, ("198.18.0.2",), redirect_dns=True)
    nat = lines(p)
    assert any("-A OUTPUT -d 198.18.0.2/32 -p udp" in l and "REDIRECT --to-ports 15053" in l for l in nat)
    assert not any("redirect all DNS" in l for l in nat)
    raw = lines(p, "raw")
    assert raw[0].startswith("-A PREROUTING -s 198.18.0.2/32 -p udp") and "--zone 1" in raw[0]


def test_redirect_dns_without_servers_of_the_family_adds_no_dns_rules():
    p = plan(6, (), redirect_dns=True)
    assert not [t for t in p.tables if t.name == "raw"]
    assert not any("53" in l for l in lines(p))


def test_skip_conntrack_zone_split_drops_the_raw_table_only():
    p = plan(4, ("198.18.0.2",), redirect_all_dns_traffic=True, skip_dns_conntrack_zone_split=True)
    assert [t.name for t in p.tables] == ["nat"]
    assert any("redirect all DNS requests" in l for l in lines(p))


def test_redirect_inbound_false_keeps_the_jump_and_returns():
    nat = lines(plan(redirect_inbound=False))
    assert [l for l in nat if l.startswith("-A TPCTL_INBOUND ")] == [
        '-A TPCTL_INBOUND -p tcp -m comment --comment "tpctl/inbound traffic redirection is disabled" -j RETURN']
    assert any(l.startswith("-A PREROUTING") and "-j TPCTL_INBOUND" in l for l in nat)


def test_insert_instead_of_append_uses_positions():
    p = plan(redirect_inbound_insert_instead_of_append=True, redirect_outbound_insert_instead_of_append=True)
    (nat,) = p.tables
    text = nat.restore_text()
    assert "-I PREROUTING 1 -p tcp" in text and "-I OUTPUT 1 -p tcp" in text
    assert "redirect remaining TCP traffic" in text


def test_logs_go_first_in_output_and_before_the_prerouting_jump():
    nat = lines(plan(iptables_logs=True))
    output = [l for l in nat if l.startswith("-A OUTPUT")]
    assert output[0].endswith('-j LOG --log-prefix "OUTPUT:" --log-level 7')
    pre = [l for l in nat if l.startswith("-A PREROUTING")]
    assert pre[0].endswith('-j LOG --log-prefix "PREROUTING:" --log-level 7') and pre[1].endswith("-j TPCTL_INBOUND")


def test_drop_invalid_packets_adds_the_mangle_rule():
    mangle = lines(plan(drop_invalid_packets=True), "mangle")
    assert mangle == ['-A PREROUTING -m comment --comment "tpctl/drop packets in the INVALID state to prevent '
                      'potential issues with malformed or out-of-order packets" -m conntrack --ctstate INVALID -j DROP']


def test_disable_comments_removes_every_comment():
    p = plan(disable_comments=True, redirect_all_dns_traffic=True)
    assert all("comment" not in t.restore_text() for t in p.tables)


def test_ipv6_uses_its_own_loopback_addresses_and_drops_ipv4_exclusions():
    nat = lines(plan(6, exclude_outbound_ips=v.network_list("10.0.0.1,fd00::/8")))
    assert any("-s ::6/128 -o lo" in l for l in nat) and any("-d ::1/128" in l for l in nat)
    assert any("-d fd00::/8" in l for l in nat) and not any("10.0.0.1" in l for l in nat)


def test_restore_text_creates_chains_before_using_them():
    text = plan().tables[0].restore_text()
    assert text.index("-N TPCTL_OUTBOUND") < text.index("-j TPCTL_OUTBOUND")
    assert text.startswith("*nat\n") and text.endswith("COMMIT\n")
