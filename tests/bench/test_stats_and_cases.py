"""Aggregation, ratios, case selection and the route check: pure parts of bench."""
from __future__ import annotations

import pytest

from bench import cases, stats
from bench.measure import RoutingError, check_route
from bench.runner import check_accel


def test_summary_is_median_with_range():
    s = stats.summarize([10.0, 30.0, 20.0, None])
    assert (s.median, s.low, s.high, s.n) == (20.0, 10.0, 30.0, 3)
    assert s.spread_pct == pytest.approx(100.0)
    assert stats.summarize([]) is None
    assert stats.summarize([5.0]).spread_pct == 0.0


def test_ratios_against_a_reference_case():
    summaries = stats.summarize_cases({"explicit": {"conn_rate": [100.0, 110.0, 90.0]},
                                       "ebpf": {"conn_rate": [120.0], "bulk": [1.0]},
                                       "direct": {}})
    assert stats.ratios(summaries, "explicit") == {"ebpf": {"conn_rate": pytest.approx(1.2), "bulk": None},
                                                   "direct": {}}
    assert stats.ratio(summaries["ebpf"]["conn_rate"], stats.summarize([0.0])) is None
    assert stats.change_pct(0.88) == "-12.0%"
    assert stats.change_pct(1.25) == "+25.0%"
    assert stats.change_pct(None) == "n/a"


def test_case_selection_alias_order_and_errors():
    assert [c.name for c in cases.select(["ebpf", "iptables", "direct"])] == [
        "direct", "iptables-nft", "iptables-legacy", "ebpf"]
    with pytest.raises(ValueError, match="unknown case 'nft'"):
        cases.select(["nft"])
    assert [c.name for c in cases.select(["ebpf", "nftables"])] == ["nftables", "ebpf"]
    assert cases.engines_of(cases.select(["ebpf-noaccel", "explicit"])) == ["ebpf"]


def test_case_targets_and_frontends():
    direct, explicit, ebpf = (cases.CASES[n] for n in ("direct", "explicit", "ebpf"))
    assert direct.target("http", "198.18.0.2") == ("198.18.0.2", 80) and direct.frontend("http") is None
    assert explicit.target("iperf", "198.18.0.2") == ("127.0.0.1", 15201)
    assert explicit.frontend("iperf") == "explicit_iperf"
    assert ebpf.target("http", "198.18.0.2") == ("198.18.0.2", 80) and ebpf.frontend("http") == "outbound"
    assert cases.CASES["ebpf-noaccel"].extra_flags == ("--ebpf-sk-msg-accel=false",)
    assert cases.CASES["ebpf"].extra_flags == ("--ebpf-sk-msg-accel=true",)  # it is off by default


ZERO = {"outbound": 0, "explicit_http": 0, "explicit_iperf": 0}


def test_route_check_accepts_the_expected_frontend():
    after = {**ZERO, "outbound": 1000}
    assert check_route(cases.CASES["iptables-nft"], "http", ZERO, after, 1000) == 1000
    assert check_route(cases.CASES["direct"], "http", ZERO, ZERO, 500) == 0


@pytest.mark.parametrize("case, after, message", [
    ("ebpf", {**ZERO, "outbound": 10}, "bypassed the sidecar"),        # fewer sessions than connections
    ("ebpf", {**ZERO, "explicit_http": 1000}, "wrong HAProxy frontends"),
    ("direct", {**ZERO, "outbound": 1}, "must not use it"),
    ("explicit", {**ZERO, "outbound": 1000, "explicit_http": 1000}, "wrong HAProxy frontends"),
])
def test_route_check_fails_loudly(case, after, message):
    with pytest.raises(RoutingError, match=message):
        check_route(cases.CASES[case], "http", ZERO, after, 1000)


def test_accel_check():
    check_accel(cases.CASES["ebpf"], [4])
    check_accel(cases.CASES["ebpf-noaccel"], [0])
    check_accel(cases.CASES["iptables-nft"], [])
    with pytest.raises(RoutingError, match="no socket was in the sockhash"):
        check_accel(cases.CASES["ebpf"], [0])
    with pytest.raises(RoutingError, match="yet 2 sockets"):
        check_accel(cases.CASES["ebpf-noaccel"], [2])
    with pytest.raises(RoutingError, match="not read"):
        check_accel(cases.CASES["ebpf"], [])


def test_disturbed_rounds_are_left_out_where_quiet_ones_remain():
    results = {"cases": {"ebpf": {"conn_rate": [100.0, 20.0, 110.0], "install_s": [3.0, 9.0, 3.5]},
                         "direct": {"conn_rate": [50.0, 60.0]}},
               "checks": {"ebpf": {"other_load_pct": [1, 80, 2]}, "direct": {"other_load_pct": [90, 95]}},
               "scale": {"ebpf": {"10": {"conn_rate": [5.0, 1.0], "other_load_pct": [0, 70]}}}}
    quiet, dropped = stats.drop_disturbed(results)
    assert quiet["cases"]["ebpf"] == {"conn_rate": [100.0, 110.0], "install_s": [3.0, 3.5]}
    assert quiet["cases"]["direct"] == {"conn_rate": [50.0, 60.0]}  # no quiet round: all kept
    assert quiet["scale"]["ebpf"]["10"]["conn_rate"] == [5.0]
    assert dropped == ["ebpf round 2 (80% other load)", "scale ebpf 10 round 2 (70% other load)"]
    assert results["cases"]["ebpf"]["conn_rate"] == [100.0, 20.0, 110.0]  # the raw results stay whole
