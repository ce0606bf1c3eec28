"""`install --persist` for every engine, under the sandbox's own root (never the host's /etc):
the unit's own stop and start (what systemd runs at shutdown and boot) take the install down
and make it again from the file alone; a plain uninstall removes the file and the unit; a
failed install leaves neither. The real reboot is the kernel matrix's (vagrant/)."""
from __future__ import annotations

import json
import os
import shlex

import pytest
import yaml

from engine import persist
from sandbox.netns import SRV_V4
from tests.netns.conftest import install, install_args
from tests.netns.host_view import host_view

FLAGS = ("--exclude-outbound-ports", "7001", "--redirect-dns")


def paths(sandbox) -> tuple[str, str, str]:
    return tuple(os.path.join(sandbox.persist_root, p.lstrip("/")) for p in (persist.CONFIG, persist.UNIT, persist.WANTS))


def unit_command(sandbox, key: str) -> list[str]:
    with open(paths(sandbox)[1], encoding="utf-8") as handle:
        line = next(line for line in handle if line.startswith(f"{key}="))
    return shlex.split(line.split("=", 1)[1])


def redirected(scene) -> bool:
    before = len(scene.connections("outbound"))
    assert scene.outbound(SRV_V4, 9000)["reply"].startswith(f"hello from {SRV_V4}:9000")
    return len(scene.connections("outbound")) > before


@pytest.mark.parametrize("engine", ["iptables-nft", "ebpf", "nftables"])
def test_the_unit_stops_and_starts_the_install_from_the_file_alone(scene, sandbox, engine):
    args = install_args(engine, sandbox, "--persist", *FLAGS)  # mounts the sandbox's bpffs for eBPF
    before = host_view(sandbox)
    assert sandbox.tpctl(*args).returncode == 0
    config_file, unit, wants = paths(sandbox)
    assert os.path.islink(wants) and os.readlink(wants) == "../tpctl.service"
    status = sandbox.tpctl("status")
    assert status.returncode == 0 and "persistent: yes (tpctl.service enabled" in status.stdout, status.stdout
    first = json.loads(sandbox.tpctl("status", "--json").stdout)
    assert first["persistent"]["persistent"] is True and redirected(scene)

    stop = sandbox.run(sandbox.app, unit_command(sandbox, "ExecStop"), timeout=120,
                       env={**os.environ, "TPCTL_STATE_DIR": sandbox.state_dir, "TPCTL_PERSIST_ROOT": sandbox.persist_root})
    assert stop.returncode == 0, stop.stderr
    assert not redirected(scene) and all(os.path.lexists(p) for p in (config_file, unit, wants))
    down = sandbox.tpctl("status")
    assert "tpctl: not installed" in down.stdout and "persistent: yes" in down.stdout, down.stdout

    start = unit_command(sandbox, "ExecStart")  # the unit names its file: under the sandbox's root here
    assert start[start.index("--config") + 1] == config_file
    started = sandbox.run(sandbox.app, start, timeout=300,
                          env={**os.environ, "TPCTL_STATE_DIR": sandbox.state_dir, "TPCTL_PERSIST_ROOT": sandbox.persist_root})
    assert started.returncode == 0, started.stderr
    again = json.loads(sandbox.tpctl("status", "--json").stdout)
    assert again["engine"] == first["engine"] and again["config"] == {**first["config"], "persist": False}
    assert redirected(scene)

    assert sandbox.tpctl("uninstall").returncode == 0
    assert not any(os.path.lexists(p) for p in (config_file, unit, wants))
    assert host_view(sandbox) == before


def test_a_failed_persisting_install_leaves_no_file_and_no_unit(sandbox):
    failed = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--persist"),
                           env={"TPCTL_FAULT_INJECT": "record the install in the state file"})
    assert failed.returncode == 4, failed.stderr
    assert not any(os.path.lexists(p) for p in paths(sandbox))
    dry = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--persist", "--dry-run"))
    assert dry.returncode == 0 and "# --persist: would write" in dry.stderr
    assert not any(os.path.lexists(p) for p in paths(sandbox))


def test_persist_over_an_unpersisted_install_of_the_same_config_writes_the_files(sandbox):
    install(sandbox, "iptables-nft", *FLAGS)
    assert not os.path.lexists(paths(sandbox)[1])
    result = install(sandbox, "iptables-nft", "--persist", *FLAGS)
    assert "nothing changed" not in result.stderr and os.path.islink(paths(sandbox)[2])
    assert "nothing changed" in install(sandbox, "iptables-nft", "--persist", *FLAGS).stderr


def test_status_dataplane_prints_the_block_kuma_dp_s_dataplane_needs(sandbox):
    assert sandbox.tpctl("status", "--dataplane").returncode == 1  # not installed: nothing to describe
    install(sandbox, "nftables", "--redirect-inbound-port", "16006")
    block = yaml.safe_load(sandbox.tpctl("status", "--dataplane").stdout)
    assert block == {"networking": {"transparentProxying": {
        "redirectPortInbound": 16006, "redirectPortOutbound": 15001, "ipFamilyMode": "DualStack"}}}
    install(sandbox, "nftables", "--ip-family-mode", "ipv4")
    block = yaml.safe_load(sandbox.tpctl("status", "--dataplane").stdout)
    assert block["networking"]["transparentProxying"]["ipFamilyMode"] == "IPv4"
