"""The nftables engine beside other owners' netfilter objects: one table of ours, nothing else
touched, base-chain priorities that keep iptables' rule order, one transaction per change, and
status that notices when someone edits our table. Traffic itself: test_traffic.py (engine
`nftables`), test_unmodified_proxy.py, test_reconfigure.py."""
from __future__ import annotations

import json
import os

import pytest

from sandbox.netns import APP_V4, SRV_V4
from tests.netns.conftest import add_foreign_rules, install, install_args
from tests.netns.host_view import host_view
from tests.netns.test_lifecycle import MANY_FLAGS

STEP = "nftables: replace table inet tpctl in one transaction"
FOREIGN_TABLE = """table inet foreign {
\tset blocked {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 198.18.200.0/24 }
\t}

\tchain foreign_out {
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr @blocked tcp dport 7778 redirect to :22
\t}

\tchain foreign_pre {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tudp dport 5353 notrack
\t}
}
"""


def ruleset(sandbox) -> str:
    return sandbox.run(sandbox.app, ["nft", "list", "ruleset"], timeout=30, check=True).stdout


def our_table(sandbox) -> str | None:
    result = sandbox.run(sandbox.app, ["nft", "list", "table", "inet", "tpctl"], timeout=30)
    return result.stdout if result.returncode == 0 else None


def foreign_table(sandbox) -> str:
    return sandbox.run(sandbox.app, ["nft", "list", "table", "inet", "foreign"], timeout=30, check=True).stdout


def add_foreign_table(sandbox) -> None:
    sandbox.run(sandbox.app, ["nft", "-f", "-"], input=FOREIGN_TABLE, check=True)


def test_uninstall_leaves_the_ruleset_exactly_as_before_with_foreign_tables_present(scene, sandbox):
    add_foreign_rules(sandbox)  # iptables-nft's and iptables-legacy's tables, in both families
    add_foreign_table(sandbox)
    before, foreign = host_view(sandbox), foreign_table(sandbox)
    install(sandbox, "nftables", *MANY_FLAGS)
    assert our_table(sandbox) and host_view(sandbox) != before
    assert foreign_table(sandbox) == foreign  # untouched while ours is there
    assert scene.outbound(SRV_V4, 9000)["reply"].startswith(f"hello from {SRV_V4}:9000")
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]
    result = sandbox.tpctl("uninstall", "--verbose")
    assert result.returncode == 0 and "nftables table inet tpctl" in result.stdout + result.stderr, result.stderr
    assert host_view(sandbox) == before  # the nft ruleset, every iptables table, lo, the state dir


@pytest.mark.parametrize("engine", ["iptables-nft", "nftables"])
def test_a_foreign_dnat_keeps_winning_over_the_appended_redirect_and_loses_to_the_inserted(scene, sandbox, engine):
    """As with kumactl's appended PREROUTING jump, a DNAT that was there first (Docker's
    published ports) wins; --redirect-inbound-insert-instead-of-append puts ours first. The
    nftables engine's priorities (-90 / -110 around iptables' -100) keep iptables' order."""
    sandbox.run(sandbox.app, ["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080",
                              "-j", "REDIRECT", "--to-ports", "8081"], check=True)
    install(sandbox, engine)
    reply = scene.inbound(APP_V4, 8080)
    assert reply["reply"].startswith(f"hello from {APP_V4}:8081 to {SRV_V4}:"), reply  # the foreign rule's
    assert scene.connections("inbound") == []
    install(sandbox, engine, "--redirect-inbound-insert-instead-of-append")
    reply = scene.inbound(APP_V4, 8080)
    assert reply["reply"].startswith(f"hello from {APP_V4}:8080 to 127.0.0.6:"), reply  # through the sidecar
    assert [c["original_dst"] for c in scene.connections("inbound")] == [f"{APP_V4}:8080"]


def test_dry_run_prints_the_one_transaction_the_kernel_accepts_and_changes_nothing(sandbox):
    before = ruleset(sandbox)
    result = sandbox.tpctl(*install_args("nftables", sandbox, "--dry-run", *MANY_FLAGS))
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("table inet tpctl\ndelete table inet tpctl\ntable inet tpctl {"), script[:200]
    assert "set exclude_outbound_ports_for_uids {" in script and "elements = { 1, 22 }" in script
    assert ruleset(sandbox) == before and not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))
    check = sandbox.run(sandbox.app, ["nft", "--check", "-f", "-"], input=script)
    assert check.returncode == 0, check.stderr
    assert ruleset(sandbox) == before


def test_a_failing_install_or_reinstall_leaves_exactly_the_table_before(sandbox):
    add_foreign_table(sandbox)
    before = ruleset(sandbox)
    failed = sandbox.tpctl(*install_args("nftables", sandbox), env={"TPCTL_FAULT_INJECT": STEP})
    assert failed.returncode == 4, failed.stderr
    assert ruleset(sandbox) == before  # the fresh install: no table at all
    install(sandbox, "nftables", "--exclude-outbound-ports", "9001", *MANY_FLAGS[:1])
    first = our_table(sandbox)
    status = json.loads(sandbox.tpctl("status", "--json").stdout)
    failed = sandbox.tpctl(*install_args("nftables", sandbox, "--exclude-outbound-ports", "9002"),
                           env={"TPCTL_FAULT_INJECT": STEP})
    assert failed.returncode == 4, failed.stderr
    assert our_table(sandbox) == first  # the replaced table came back, element for element
    again = sandbox.tpctl("status", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["nftables"] == status["nftables"], again.stdout


def test_status_reports_edits_of_our_table_and_a_reinstall_repairs_them(sandbox):
    install(sandbox, "nftables", "--exclude-outbound-ports", "9001,9002")
    sandbox.run(sandbox.app, ["nft", "add", "rule", "inet", "tpctl", "outbound", "tcp", "dport", "4444", "return"],
                check=True)
    sandbox.run(sandbox.app, ["nft", "delete", "element", "inet", "tpctl", "exclude_outbound_ports", "{ 9002 }"],
                check=True)
    result = sandbox.tpctl("status")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "added: tcp dport 4444 return" in result.stderr and "missing: elements = { 9001, 9002 }" in result.stderr
    install(sandbox, "nftables", "--exclude-outbound-ports", "9001,9002")  # same config, drifted: reapplied
    assert sandbox.tpctl("status").returncode == 0
    sandbox.run(sandbox.app, ["nft", "delete", "table", "inet", "tpctl"], check=True)
    gone = sandbox.tpctl("status")
    assert gone.returncode == 5 and "nftables table inet tpctl is missing" in gone.stderr, gone.stderr


def test_ten_thousand_ports_and_cidrs_are_sets_that_exclude_exactly_their_members(scene, sandbox):
    """The exclusions the benchmark sweeps, as sets: one rule each whatever their size."""
    ports = list(range(20000, 30000))
    cidrs = [f"198.19.{i // 64}.{(i % 64) * 4}/30" for i in range(10000)]
    config = os.path.join(sandbox.tmp, "many.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        json.dump({"redirect": {"outbound": {"excludePorts": ports, "excludePortsForIPs": cidrs}}}, handle)
    install(sandbox, "nftables", "--config", config)
    listing = json.loads(sandbox.run(sandbox.app, ["nft", "-j", "list", "table", "inet", "tpctl"], check=True).stdout)
    sets = {item["set"]["name"]: item["set"].get("elem", []) for item in listing["nftables"] if "set" in item}
    assert len(sets["exclude_outbound_ports"]) == 10000 and len(sets["exclude_outbound_ipv4"]) == 10000
    rules = [item["rule"] for item in listing["nftables"] if "rule" in item]
    assert len(rules) < 20, "exclusions must be set elements, not rules"
    assert scene.outbound(SRV_V4, 9000)["reply"].startswith(f"hello from {SRV_V4}:9000")
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]


def test_a_flag_it_cannot_honour_falls_back_to_iptables_saying_which(sandbox):
    result = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--nftables-enabled", "--store-firewalld",
                                         "--dry-run"))
    assert result.returncode == 0, result.stderr
    assert "--nftables-enabled, but nftables checks failed; falling back to iptables" in result.stderr
    assert "store-firewalld" in result.stderr and "*nat" in result.stdout
    refused = sandbox.tpctl(*install_args("nftables", sandbox, "--store-firewalld"))
    assert refused.returncode == 3 and "--no-fallback" in refused.stderr, refused.stderr
    assert our_table(sandbox) is None
