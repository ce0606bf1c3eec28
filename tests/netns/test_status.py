"""`tpctl status` for people and for machines, with and without a state file, for every engine."""
from __future__ import annotations

import json
import os

import pytest

from tests.netns.conftest import install


@pytest.mark.parametrize("engine", ["iptables-nft", "iptables-legacy", "ebpf", "nftables"])
def test_status_reads_as_lines_a_person_reads(sandbox, engine):
    install(sandbox, engine, "--exclude-outbound-ports", "9001")
    result = sandbox.tpctl("status")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"tpctl: installed, engine {engine.split('-')[0]} (since ")
    assert "  why:  " in text and "  families: IPv4, IPv6; ::6/128 on lo added by tpctl" in text
    assert "drift: none" in text
    assert not any(mark in text for mark in ("{'", "': ", "[]", "None")), text  # no Python reprs
    if engine == "ebpf":
        assert "programs attached (" in text and f"tc on {sandbox.app_if}: tp_tc_egress, tp_tc_ingress" in text
        assert "excluded outbound ports: 9001" in text and "redirects: outbound to :15001, inbound to :15006" in text
    elif engine == "nftables":
        assert "table inet tpctl (see it with: nft list table inet tpctl): " in text
        assert " rules in 5 chains; sets: exclude_outbound_ports (1)" in text
    else:
        backend = engine.split("-")[1]
        assert f"backend: {backend} tables" in text and f"iptables-{backend}-save" in text
        assert "IPv4: " in text and "rules in 4 chains (TPCTL_INBOUND" in text


def test_status_without_state_finds_ebpf_programs_and_pins_and_exits_5(sandbox):
    install(sandbox, "ebpf")
    os.unlink(os.path.join(sandbox.state_dir, "state.json"))
    result = sandbox.tpctl("status", "--ebpf-bpffs-path", sandbox.bpffs)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "tpctl: not installed (no usable state file in" in result.stdout
    assert "eBPF program tp_sock4_connect" in result.stdout and "attached to " + sandbox.cgroup in result.stdout
    assert f"pin {sandbox.bpffs}/tpctl/prog_tp_sock4_connect" in result.stdout
    report = json.loads(sandbox.tpctl("status", "--json", "--ebpf-bpffs-path", sandbox.bpffs).stdout)
    assert report["installed"] is False and any("tp_sockops" in d for d in report["drift"])
    assert sandbox.tpctl("uninstall", "--ebpf-bpffs-path", sandbox.bpffs).returncode == 0
    clean = sandbox.tpctl("status", "--ebpf-bpffs-path", sandbox.bpffs)
    assert clean.returncode == 0 and clean.stdout.strip() == "tpctl: not installed"


def test_status_without_state_finds_tagged_iptables_chains(sandbox):
    install(sandbox, "iptables-legacy")
    os.unlink(os.path.join(sandbox.state_dir, "state.json"))
    result = sandbox.tpctl("status")
    assert result.returncode == 5 and "legacy IPv4 chain TPCTL_OUTBOUND" in result.stdout, result.stdout


def test_a_state_file_that_is_a_json_array_is_no_state_not_a_traceback(sandbox):
    install(sandbox, "iptables-nft")
    with open(os.path.join(sandbox.state_dir, "state.json"), "w", encoding="utf-8") as handle:
        handle.write("[1, 2]")
    for command in (("status",), ("status", "--json"), ("uninstall",)):
        result = sandbox.tpctl(*command)
        assert "Traceback" not in result.stderr, result.stderr
    assert sandbox.tpctl("status").returncode == 0  # uninstall removed the tagged rules
