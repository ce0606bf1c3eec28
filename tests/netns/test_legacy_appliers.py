"""The legacy backend's two appliers: python-iptables, and the rendered plan through
iptables-legacy-restore --noflush where python-iptables cannot build tpctl's rules (python-iptables
1.2.0 with iptables 1.8.11, ldx/python-iptables#353). Each is tested wherever it works."""
from __future__ import annotations

import json

from engine.iptables.legacy_selftest import python_iptables_problem
from sandbox.netns import SRV_V4
from tests.netns.conftest import install, install_args, snapshot


def _applier(sandbox) -> str:
    return json.loads(sandbox.tpctl("status", "--json").stdout)["iptables"]["applier"]


def test_the_restore_applier_redirects_real_traffic_and_uninstall_leaves_the_tables_as_before(scene, sandbox):
    before = snapshot(sandbox)
    result = install(sandbox, "iptables-legacy-restore")
    assert "legacy applier iptables-legacy-restore: --legacy-applier restore" in result.stderr
    assert _applier(sandbox) == "iptables-legacy-restore"
    assert "through iptables-legacy-restore" in sandbox.tpctl("status").stdout
    reply = scene.outbound(SRV_V4, 9000)
    assert reply["reply"].startswith(f"hello from {SRV_V4}:9000"), reply
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]
    assert sandbox.tpctl("uninstall").returncode == 0
    assert snapshot(sandbox) == before


def test_auto_uses_python_iptables_exactly_where_its_self_test_passes(sandbox):
    problem = python_iptables_problem()
    result = install(sandbox, "iptables-legacy")
    if problem:
        assert "legacy applier iptables-legacy-restore: python-iptables cannot build" in result.stderr
        assert _applier(sandbox) == "iptables-legacy-restore"
    else:
        assert "legacy applier python-iptables" in result.stderr
        assert _applier(sandbox) == "python-iptables"


def test_forcing_python_iptables_works_or_is_refused_naming_its_self_test(sandbox):
    before = snapshot(sandbox)
    result = sandbox.tpctl(*install_args("iptables-legacy", sandbox, "--legacy-applier", "python-iptables"))
    if python_iptables_problem():
        assert result.returncode == 3, result.stderr
        assert "--legacy-applier python-iptables: its self-test failed here" in result.stderr
        assert "fix: --legacy-applier auto" in result.stderr
        assert snapshot(sandbox) == before
    else:
        assert result.returncode == 0, result.stderr
        assert _applier(sandbox) == "python-iptables"
