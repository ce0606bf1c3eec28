"""The nftables case: its install flags, the set element counts read back from the kernel (nft
JSON, captured from nft 1.0.6 in tests/bench/data), the scale sweep's check on them, and the
engine's target (rate at 10,000 + 10,000 exclusions against 10 + 10, install time). Pure or
against stand-ins: no root, no kernel."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from bench import cases, cli, parse, report, scale
from bench.stack import Stack, StackError

DATA = os.path.join(os.path.dirname(__file__), "data")


def read(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as handle:
        return handle.read()


# -- nft JSON ----------------------------------------------------------------------------------

def test_set_elements_from_real_nft_output():
    assert parse.nft_set_elements(read("nft_set_ports.json"), "inet", "tpctl", "exclude_outbound_ports") == 4
    assert parse.nft_set_elements(read("nft_set_ipv4.json"), "inet", "tpctl", "exclude_outbound_ipv4") == 3


def test_set_elements_count_the_named_set_only():
    two = ('{"nftables": [{"metainfo": {}}, '
           '{"set": {"family": "inet", "table": "other", "name": "exclude_outbound_ports", "elem": [1, 2, 3]}}, '
           '{"set": {"family": "ip", "table": "tpctl", "name": "exclude_outbound_ports", "elem": [1, 2]}}, '
           '{"set": {"family": "inet", "table": "tpctl", "name": "exclude_outbound_ports", "elem": [7]}}]}')
    assert parse.nft_set_elements(two, "inet", "tpctl", "exclude_outbound_ports") == 1
    with pytest.raises(parse.ParseError, match="no set inet tpctl exclude_outbound_ipv4"):
        parse.nft_set_elements(read("nft_set_ports.json"), "inet", "tpctl", "exclude_outbound_ipv4")


def test_a_merged_range_is_one_element_and_an_empty_set_none():
    # an interval set that merged 20000-20009 into one range holds 1 element, not 10: the sweep
    # asked for one element per port and must see that it did not get them
    merged = ('{"nftables": [{"set": {"family": "inet", "table": "tpctl", "name": "p", '
              '"elem": [{"range": [20000, 20009]}, 20011]}}]}')
    assert parse.nft_set_elements(merged, "inet", "tpctl", "p") == 2
    empty = '{"nftables": [{"set": {"family": "inet", "table": "tpctl", "name": "p", "flags": ["interval"]}}]}'
    assert parse.nft_set_elements(empty, "inet", "tpctl", "p") == 0


@pytest.mark.parametrize("text, message", [
    ("Error: No such file or directory", "no JSON"),
    ('{"something": []}', "nftables"),
    ('{"nftables": [{"set": {"family": "inet", "table": "tpctl", "name": "p", "elem": 3}}]}', "not a list"),
])
def test_set_elements_refuse_what_is_not_a_listing(text, message):
    with pytest.raises(parse.ParseError, match=message):
        parse.nft_set_elements(text, "inet", "tpctl", "p")


def test_tables():
    assert parse.nft_tables(read("nft_tables.json")) == {("inet", "tpctl"), ("inet", "other")}
    assert parse.nft_tables('{"nftables": [{"metainfo": {"version": "1.0.6"}}]}') == set()


# -- reading the counts in the app namespace -----------------------------------------------------

class FakeSandbox:
    """Answers `nft` commands from a dict {argv tail: (returncode, stdout, stderr)}; records them."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]):
        self.tmp, self.app, self.srv, self.resolv_conf = "/nonexistent", "tpb-app", "tpb-srv", "/nonexistent/resolv"
        self.answers = answers
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def run(self, ns, argv, timeout=60, check=False, **_):
        self.calls.append((ns, tuple(argv)))
        code, out, err = self.answers[tuple(argv)]
        if check and code:
            raise RuntimeError(f"{argv} exited {code}")
        return subprocess.CompletedProcess(argv, code, out, err)


def list_set(name):
    return ("nft", "-j", "list", "set", "inet", "tpctl", name)


TABLES = ("nft", "-j", "list", "tables")
NO_SUCH = "Error: No such file or directory\nlist set inet tpctl exclude_outbound_ipv4\n"


def test_counts_are_read_in_the_app_namespace():
    sb = FakeSandbox({list_set("exclude_outbound_ports"): (0, read("nft_set_ports.json"), ""),
                      list_set("exclude_outbound_ipv4"): (0, read("nft_set_ipv4.json"), "")})
    assert scale.installed_exclusions(Stack(sb, {}), "nftables") == (4, 3)
    assert sb.calls == [("tpb-app", list_set("exclude_outbound_ports")), ("tpb-app", list_set("exclude_outbound_ipv4"))]


def test_an_absent_set_in_the_table_is_zero_elements():
    sb = FakeSandbox({list_set("exclude_outbound_ports"): (0, read("nft_set_ports.json"), ""),
                      list_set("exclude_outbound_ipv4"): (1, "", NO_SUCH), TABLES: (0, read("nft_tables.json"), "")})
    assert scale.installed_exclusions(Stack(sb, {}), "nftables") == (4, 0)


def test_no_table_or_another_failure_is_an_error_not_zero():
    no_table = FakeSandbox({list_set("p"): (1, "", NO_SUCH),
                            TABLES: (0, '{"nftables": [{"table": {"family": "inet", "name": "other"}}]}', "")})
    with pytest.raises(StackError, match="nft list set inet tpctl p exited 1"):
        Stack(no_table, {}).nft_set_elements("p")
    refused = FakeSandbox({list_set("p"): (1, "", "Error: Operation not permitted"),
                           TABLES: (0, read("nft_tables.json"), "")})
    with pytest.raises(StackError, match="Operation not permitted"):
        Stack(refused, {}).nft_set_elements("p")
    assert all(argv != TABLES for _, argv in refused.calls)


def test_the_case_installs_nftables_without_a_fallback():
    case = cases.CASES["nftables"]
    assert (case.engine, case.frontend("http"), case.target("http", "198.18.0.2")) == (
        "nftables", "outbound", ("198.18.0.2", 80))
    args = Stack(FakeSandbox({}), {}).install_args("nftables")
    assert args[args.index("--nftables-enabled"):][:2] == ["--nftables-enabled", "--no-fallback"]
    assert "--iptables-backend" not in args and "--ebpf-enabled" not in args
    assert cases.engines_of(cases.select(["ebpf", "nftables", "iptables"])) == [
        "iptables-nft", "iptables-legacy", "nftables", "ebpf"]


def test_preflight_wants_nft_only_for_the_nftables_case(monkeypatch):
    monkeypatch.setattr(cli.shutil, "which", lambda tool: None if tool == "nft" else f"/usr/bin/{tool}")
    with_nft = cli.preflight(cli.parser().parse_args(["--cases", "nftables,ebpf"]))
    without = cli.preflight(cli.parser().parse_args(["--cases", "iptables-nft,ebpf"]))
    assert any("missing nft" in p for p in with_nft) and not any("missing" in p for p in without)


# -- the sweep refuses a size that did not land ------------------------------------------------

class Done:
    def __init__(self, wall_s):
        self.wall_s, self.cpu_s, self.maxrss_kib = wall_s, wall_s, 1024


class SweepStack:
    """nftables holds `held(size)` elements in each of the two sets after an install of `size`."""

    def __init__(self, held):
        self.held, self.size, self.files = held, 0, {}

    def write_file(self, name, text):
        self.files[name] = text
        return f"/sandbox/{name}"

    @contextlib.contextmanager
    def installed(self, engine, *flags, traffic=True):
        self.size = int(flags[-1].rsplit("-", 1)[1].split(".")[0])  # /sandbox/exclusions-N.yaml
        record = {"install": Done(0.2)}
        yield record
        record["uninstall"] = Done(0.1)

    def nft_set_elements(self, name):
        assert name in (scale.NFT_PORTS_SET, scale.NFT_V4_SET)
        return self.held(self.size)


class SweepMeasurer:
    def new_connections(self, case):
        assert case.engine == "nftables"
        return {"conn_rate": 1000.0, "other_load_pct": 0.0}


def test_sweep_measures_only_sizes_the_kernel_holds():
    out = scale.run(SweepStack(lambda n: n), SweepMeasurer(), ["nftables"], [10, 10000], 1, say=lambda _: None)
    assert out["nftables"]["10000"]["conn_rate"] == [1000.0] and out["nftables"]["10000"]["install_s"] == [0.2]
    with pytest.raises(StackError, match="nftables: asked to exclude 10000 ports and 10000 CIDRs, the kernel holds "
                                         "9999 and 9999"):
        scale.run(SweepStack(lambda n: min(n, 9999)), SweepMeasurer(), ["nftables"], [10, 10000], 1,
                  say=lambda _: None)


# -- the target ----------------------------------------------------------------------------------

def sweep(rates_small, rates_large, install_large, engine="nftables"):
    return {engine: {"10": {"conn_rate": rates_small, "install_s": [0.1] * len(rates_small)},
                     "10000": {"conn_rate": rates_large, "install_s": install_large}}}


@pytest.mark.parametrize("small, large, install, rate_met, install_met", [
    ([8000.0], [7700.0], [0.30], True, True),             # -3.75%
    ([8000.0], [7600.0], [0.30], True, True),             # exactly -5%: within
    ([8000.0], [7590.0], [0.30], False, True),            # -5.1%
    ([8000.0], [8000.0], [0.51], True, False),
    ([9000.0, 8000.0, 7000.0], [7700.0, 7800.0, 7500.0], [0.2, 0.9, 0.4], True, True),  # medians 8000 / 7700, 0.4
])
def test_target_from_medians(small, large, install, rate_met, install_met):
    verdict = scale.target(sweep(small, large, install))
    assert (verdict["rate_met"], verdict["install_met"]) == (rate_met, install_met)
    assert verdict["met"] is (rate_met and install_met) and verdict["missing"] == []


def test_target_beside_the_other_engines_and_without_a_size():
    results = {**sweep([8000.0], [7800.0], [0.3]), **sweep([8000.0], [1200.0], [4.4], "iptables-nft"),
               **sweep([9000.0], [8700.0], [2.2], "ebpf"), **sweep([8100.0], [1600.0], [8.8], "iptables-legacy")}
    verdict = scale.target(results)
    assert list(verdict["engines"]) == ["nftables", "iptables-nft", "ebpf"]
    assert verdict["engines"]["iptables-nft"]["rate_ratio"] == pytest.approx(0.15)
    assert verdict["engines"]["ebpf"]["install_large"] == 2.2
    assert scale.target({"ebpf": results["ebpf"]}) is None
    only_small = {"nftables": {"10": {"conn_rate": [8000.0], "install_s": [0.1]}}}
    verdict = scale.target(only_small)
    assert verdict["met"] is False and verdict["rate_met"] is None and verdict["install_met"] is None
    assert verdict["missing"] == ["conn/s at 10,000 + 10,000", "install at 10,000 + 10,000"]


def test_report_shows_the_target_with_the_other_engines_drop():
    results = {**sweep([8000.0], [7800.0], [0.62]), **sweep([8000.0], [1200.0], [4.4], "iptables-nft"),
               **sweep([9000.0], [8700.0], [2.2], "ebpf")}
    text = "\n".join(report.scale_target_section(results))
    assert "| nftables | 8,000 | 7,800 | -2.5% | 0.62 |" in text
    assert "| iptables-nft | 8,000 | 1,200 | -85.0% | 4.40 |" in text
    assert "| ebpf | 9,000 | 8,700 | -3.3% | 2.20 |" in text
    assert "This run: rate -2.5%: **met**; install 0.62 s: **not met**." in text
    assert "at most 5% below" in text and "within 0.5 s" in text
    missing = "\n".join(report.scale_target_section({"nftables": {"10": {"conn_rate": [8000.0]}}}))
    assert "Not measured in this run: conn/s at 10,000 + 10,000, install at 10,000 + 10,000." in missing
    assert "**met**" not in missing and report.scale_target_section({"ebpf": {}}) == []
