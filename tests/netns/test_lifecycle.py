"""install / uninstall / status / rollback, checked against the namespace's real rule sets."""
from __future__ import annotations

import json
import os

import pytest

from engine.iptables.builder import FamilyInputs, build_family
from engine.iptables.live import normalize_save, parse_save
from tests.netns.conftest import add_foreign_rules, install, install_args, snapshot


@pytest.fixture(params=["iptables-legacy", "iptables-legacy-restore", "iptables-nft"])
def engine(request):
    """These tests read netfilter tables: the iptables engine's backends (eBPF: test_ebpf_lifecycle)."""
    return request.param


MANY_FLAGS = ["--redirect-all-dns-traffic", "--exclude-outbound-ports", "1,22", "--exclude-inbound-ports", "4444",
              "--exclude-outbound-ips", "10.0.0.1,fd00::/8", "--exclude-inbound-ips", "192.168.0.0/16",
              "--exclude-outbound-ports-for-uids", "53,3000-5000:106-108", "--vnet", "br+:172.18.0.0/16",
              "--iptables-logs", "--drop-invalid-packets"]


def test_uninstall_restores_every_table_exactly_with_foreign_rules_present(sandbox, engine):
    add_foreign_rules(sandbox)
    before = snapshot(sandbox)
    install(sandbox, engine, *MANY_FLAGS)
    assert snapshot(sandbox) != before
    result = sandbox.tpctl("uninstall")
    assert result.returncode == 0, result.stderr
    assert snapshot(sandbox) == before
    assert not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


def test_uninstall_without_state_file_finds_rules_by_their_tags(sandbox, engine):
    add_foreign_rules(sandbox)
    before = snapshot(sandbox)
    install(sandbox, engine, *MANY_FLAGS)
    os.unlink(os.path.join(sandbox.state_dir, "state.json"))
    assert sandbox.tpctl("uninstall").returncode == 0
    assert snapshot(sandbox) == before


def test_uninstall_with_comments_disabled_uses_the_recorded_rules(sandbox, engine):
    add_foreign_rules(sandbox)
    before = snapshot(sandbox)
    install(sandbox, engine, "--disable-comments", *MANY_FLAGS)
    saved = sandbox.run(sandbox.app, [f"iptables-{engine.split('-')[1]}-save"]).stdout
    assert "tpctl/" not in saved and "TPCTL_OUTBOUND" in saved
    assert sandbox.tpctl("uninstall").returncode == 0
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("step", ["add ::6/128 to lo (IPv6 inbound passthrough source)", "IPv4", "IPv6"])
def test_a_failure_half_way_rolls_back_to_exactly_before(sandbox, engine, step):
    add_foreign_rules(sandbox)
    before = snapshot(sandbox)
    addresses = sandbox.run(sandbox.app, ["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    step_name = step if step.startswith("add") else f"iptables-{engine.split('-')[1]} {step} nat"
    result = sandbox.tpctl(*install_args(engine, sandbox, *MANY_FLAGS), env={"TPCTL_FAULT_INJECT": step_name})
    assert result.returncode == 4, result.stderr
    assert "rolled back" in result.stderr and "ROLLBACK INCOMPLETE" not in result.stderr
    assert snapshot(sandbox) == before
    assert sandbox.run(sandbox.app, ["ip", "-6", "addr", "show", "dev", "lo"]).stdout == addresses
    assert not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


def test_installing_twice_is_idempotent_and_a_new_config_replaces_the_old(sandbox, engine):
    install(sandbox, engine)
    once = snapshot(sandbox)
    second = install(sandbox, engine)
    assert "already installed" in second.stderr
    assert snapshot(sandbox) == once
    os.unlink(os.path.join(sandbox.state_dir, "state.json"))  # no record: rules found by tags, replaced
    install(sandbox, engine)
    assert snapshot(sandbox) == once
    install(sandbox, engine, "--redirect-outbound-port", "15002")
    saved = "".join(snapshot(sandbox).values())
    assert "--to-ports 15002" in saved and "--to-ports 15001" not in saved
    assert saved.count("-j TPCTL_OUTBOUND\n") == 2  # one jump per family, no duplicates


@pytest.mark.parametrize("args, flag", [
    (["--redirect-inbound-port", "0"], "--redirect-inbound-port"),
    (["--exclude-outbound-ips", "10.0.0.300"], "--exclude-outbound-ips"),
    (["--exclude-outbound-ports-for-uids", "http:80:1"], "--exclude-outbound-ports-for-uids"),
    (["--vnet", "docker0"], "--vnet"),
    (["--kuma-dp-user", "no-such-user-here"], "--kuma-dp-user"),
    (["--ebpf-tc-attach-iface", "bad iface name"], "--ebpf-tc-attach-iface"),
    (["--redirect-dns", "--redirect-all-dns-traffic"], "--redirect-all-dns-traffic"),
    (["--ip-family-mode", "ipv5"], "--ip-family-mode"),
])
def test_bad_input_exits_2_naming_the_flag_and_changes_nothing(sandbox, args, flag):
    before = snapshot(sandbox)
    result = sandbox.tpctl("install", *args)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr
    assert snapshot(sandbox) == before
    assert not os.path.exists(sandbox.state_dir)


def test_dry_run_prints_the_restore_text_per_family_and_changes_nothing(sandbox):
    before = snapshot(sandbox)
    result = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--dry-run"))
    assert result.returncode == 0, result.stderr
    assert "### IPv4 ###" in result.stdout and "### IPv6 ###" in result.stdout
    assert "-N TPCTL_OUTBOUND" in result.stdout and "--to-ports 15001" in result.stdout
    assert snapshot(sandbox) == before
    assert not os.path.exists(sandbox.state_dir)


def test_the_kernel_reports_our_rules_exactly_as_rendered(sandbox, engine):
    """The text we render (and compare with kumactl's goldens) is what iptables-save prints."""
    from engine import config as config_module

    install(sandbox, engine, *MANY_FLAGS)
    saved = sandbox.run(sandbox.app, [f"iptables-{engine.split('-')[1]}-save"]).stdout
    live = parse_save(saved)
    config = config_module.build({
        "kuma_dp_user": config_module.v.proxy_user("5678"), "redirect_all_dns_traffic": True,
        "exclude_outbound_ports": (1, 22), "exclude_inbound_ports": (4444,),
        "exclude_outbound_ips": config_module.v.network_list("10.0.0.1,fd00::/8"),
        "exclude_inbound_ips": config_module.v.network_list("192.168.0.0/16"),
        "exclude_outbound_ports_for_uids": config_module.v.ports_for_uids_list(["53,3000-5000:106-108"]),
        "vnet": config_module.v.vnet_list("br+:172.18.0.0/16"), "iptables_logs": True,
        "drop_invalid_packets": True})
    plan = build_family(config, FamilyInputs(4))
    for table in plan.tables:
        expected = normalize_save(table.save_view()).splitlines()
        got = [f"*{table.name}"] + [f":{c} {p}" for c, p in live[table.name].chains.items()] + \
              [f"-A {c} {s}" for c, s in live[table.name].rules] + ["COMMIT"]
        assert sorted(got[1:-1]) == sorted(expected[1:-1])
        assert got == expected


def test_status_reports_install_and_drift(sandbox, engine):
    assert sandbox.tpctl("status").returncode == 0
    install(sandbox, engine)
    result = sandbox.tpctl("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["engine"] == "iptables" and report["drift"] == []
    backend = engine.split("-")[1]
    assert report["iptables"]["backend"] == backend
    assert report["host"]["kernel_release"]
    sandbox.run(sandbox.app, [f"iptables-{backend}", "-t", "nat", "-D", "TPCTL_OUTBOUND_REDIRECT", "1"], check=True)
    result = sandbox.tpctl("status")
    assert result.returncode == 5
    assert "missing rule -A TPCTL_OUTBOUND_REDIRECT" in result.stderr


def test_store_firewalld_writes_direct_rules_and_uninstall_removes_only_ours(sandbox):
    path = os.path.join(sandbox.tmp, "direct.xml")
    foreign = '<?xml version="1.0"?>\n<direct><rule ipv="ipv4" table="filter" chain="INPUT" priority="0">' \
              "-p tcp --dport 22 -j ACCEPT</rule></direct>\n"
    with open(path, "w") as handle:
        handle.write(foreign)
    env = {"TPCTL_FIREWALLD_DIRECT_XML": path}
    install(sandbox, "iptables-nft", "--store-firewalld", env=env)
    text = open(path).read()
    assert 'chain="TPCTL_OUTBOUND"' in text and 'ipv="ipv6"' in text and "--dport 22 -j ACCEPT" in text
    assert sandbox.tpctl("uninstall", env=env).returncode == 0
    text = open(path).read()
    assert "TPCTL" not in text and "tpctl/" not in text and "--dport 22 -j ACCEPT" in text


def test_uninstall_dry_run_lists_and_changes_nothing(sandbox, engine):
    install(sandbox, engine)
    during = snapshot(sandbox)
    result = sandbox.tpctl("uninstall", "--dry-run")
    assert result.returncode == 0 and "would remove: " in result.stdout and "-X TPCTL_OUTBOUND" in result.stdout
    assert snapshot(sandbox) == during
    assert os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


def _nft_ruleset(sandbox) -> str:
    return sandbox.run(sandbox.app, ["nft", "list", "ruleset"]).stdout


NFT_FLAGS = ["--redirect-dns", "--drop-invalid-packets", "--iptables-logs"]  # nat, raw and mangle tables


def test_on_an_empty_nf_tables_uninstall_leaves_no_empty_tables_behind(sandbox):
    """iptables-nft creates tables and base chains on first use; they were install's doing."""
    assert _nft_ruleset(sandbox) == ""
    install(sandbox, "iptables-nft", *NFT_FLAGS)
    during = _nft_ruleset(sandbox)
    assert "table ip nat" in during and "table ip6 nat" in during and "table ip raw" in during
    planned = sandbox.tpctl("uninstall", "--dry-run")
    assert planned.returncode == 0 and _nft_ruleset(sandbox) == during
    result = sandbox.tpctl("uninstall", "--verbose")
    assert result.returncode == 0, result.stderr
    assert "delete table nat (empty; install created it)" in result.stdout + result.stderr
    assert _nft_ruleset(sandbox) == ""
    # the dry run named every table and chain the real one deleted, no more
    would = {line.split("would remove: ", 1)[1] for line in planned.stdout.splitlines() if "would remove: " in line}
    did = {line.split("removed: ", 1)[1] for line in result.stdout.splitlines() if "removed: " in line}
    assert {line for line in did if line.startswith("nft ")} == {line for line in would if line.startswith("nft ")}
    assert would == did


def test_a_created_table_that_another_tool_used_since_is_kept_with_its_rule(sandbox):
    install(sandbox, "iptables-nft", *NFT_FLAGS)
    sandbox.run(sandbox.app, ["iptables-nft", "-t", "nat", "-A", "OUTPUT", "-d", "198.18.0.77", "-j", "RETURN"])
    assert sandbox.tpctl("uninstall").returncode == 0
    left = _nft_ruleset(sandbox)
    assert "table ip nat" in left and "198.18.0.77" in left and "chain OUTPUT" in left
    assert "chain PREROUTING" not in left and "TPCTL" not in left and "table ip6 nat" not in left


def test_a_rolled_back_install_leaves_no_empty_tables_behind(sandbox):
    result = sandbox.tpctl(*install_args("iptables-nft", sandbox, *NFT_FLAGS), env={"TPCTL_FAULT_INJECT": "iptables-nft IPv6 nat"})
    assert result.returncode == 4, result.stderr
    assert _nft_ruleset(sandbox) == ""
