"""Reconfiguration without a gap: while `tpctl install` replaces an install (new flags, the same
engine or another), no connection goes around the sidecar and none fails.

A client in the app cgroup opens one connection after another to a greeter on the server host
for the whole reinstall; the greeter answers with the peer it sees, which is the client's own
address and port only when the connection went around HAProxy (sandbox.peers flow). HAProxy's
log must count every connection the client saw go through it. Bounded: at most 20 s and 5,000
connections per flow.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from sandbox.netns import APP_V4, SRV_V4, Sandbox
from sandbox.scenario import PEERS
from tests.netns import haproxy_sidecar
from tests.netns.conftest import install, install_args

BASE = ("--redirect-inbound=false", "--ip-family-mode", "ipv4")
BEFORE = ("--exclude-outbound-ports", "7001")
AFTER = ("--exclude-outbound-ports", "7001,7002")  # the traffic itself (port 9000) is never excluded
SWITCHES = [
    ("iptables-nft", "iptables-nft"), ("iptables-legacy", "iptables-legacy"), ("ebpf", "ebpf"),
    ("iptables-nft", "iptables-legacy"), ("iptables-legacy", "iptables-nft"),
    ("iptables-nft", "ebpf"), ("ebpf", "iptables-nft"), ("iptables-legacy", "ebpf"), ("ebpf", "iptables-legacy"),
    ("nftables", "nftables"), ("nftables", "iptables-nft"), ("iptables-legacy", "nftables"),
    ("nftables", "ebpf"), ("ebpf", "nftables"),
]
# a step in the middle of each engine's reconfiguration (the eBPF one: before the settings switch)
HALF_WAY = {"iptables-nft": "iptables-nft IPv4 nat", "iptables-legacy": "iptables-legacy IPv4 nat",
            "ebpf": "map:tp_excl_out_ports: add the new entries",
            "nftables": "nftables: replace table inet tpctl in one transaction"}  # its one step, undone


class Flow:
    def __init__(self, sandbox: Sandbox, ns: str | None = None, host: str = SRV_V4, port: int = 9000):
        self.sb = sandbox
        self.ns, self.host, self.port = ns or sandbox.app, host, port
        self.log = os.path.join(sandbox.tmp, f"flow-{time.monotonic_ns()}.log")
        self.stop_file = self.log + ".stop"

    def __enter__(self) -> Flow:
        self.proc = self.sb.spawn(self.ns, self.sb.python(
            PEERS, "flow", self.host, str(self.port), "--stop-file", self.stop_file, "--seconds", "20", "--count", "5000",
            "--interval", "0.004"),
            log=self.log)
        deadline = time.monotonic() + 10
        while "started" not in self._text() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        assert "started" in self._text(), f"the flow never got an answer: {self._text()}"
        return self

    def _text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)  # connections after the reinstall count too
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=30)
        self.result = json.loads(self._text().splitlines()[-1])


def _scene(sandbox: Sandbox) -> str:
    log = haproxy_sidecar.start(sandbox)
    sandbox.spawn(sandbox.srv, sandbox.python(PEERS, "greeter", "--port", "9000"))
    sandbox.wait_for_port(sandbox.srv, 9000)
    return log


def _assert_all_through_the_sidecar(flow: Flow, log: str, forwarded_before: int) -> None:
    result = flow.result
    assert result["bypassed"] == 0 and result["failed"] == 0, result
    assert result["ok"] >= 5, result  # the flow really ran across the reinstall
    seen = haproxy_sidecar.forwarded(log, forwarded_before + result["ok"]) - forwarded_before
    with open(log, encoding="utf-8", errors="replace") as handle:
        other = [line for line in handle.read().splitlines() if haproxy_sidecar.FORWARDED not in line]
    assert seen == result["ok"], (f"HAProxy forwarded {seen} connections, the client saw {result['ok']} go through "
                                  f"it; HAProxy's other log lines: {other[:10]}")


def _status(sandbox: Sandbox) -> dict:
    """The state and the kernel's view of it (not the host's facts, probed afresh each time)."""
    result = sandbox.tpctl("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr  # installed, no drift
    report = json.loads(result.stdout)
    report.pop("host")
    return report


def _steps(result) -> list[str]:
    return [line.removeprefix("step: ") for line in result.stderr.splitlines() if line.startswith("step: ")]


def _reinstall_under_flow(sandbox: Sandbox, first: str, then: str, first_flags=(*BASE, *BEFORE),
                          then_flags=(*BASE, *AFTER), env: dict | None = None, noted=None):
    """`first` installed, then `then` installed over it while a flow runs through HAProxy, which
    must have carried every connection; returns the second install's result and the status
    from before it (and what `noted()` says then, when given)."""
    log = _scene(sandbox)
    install(sandbox, first, *first_flags)
    before = _status(sandbox)
    extra = noted() if noted else None
    forwarded_before = haproxy_sidecar.forwarded(log, 0, timeout=0)
    with Flow(sandbox) as flow:
        result = sandbox.tpctl(*install_args(then, sandbox, *then_flags), "--verbose", env=env)
    _assert_all_through_the_sidecar(flow, log, forwarded_before)
    return (result, before, extra) if noted else (result, before)


@pytest.mark.parametrize(("first", "then"), SWITCHES, ids=[f"{a}-to-{b}" for a, b in SWITCHES])
def test_no_connection_goes_around_the_sidecar_while_an_install_is_replaced(sandbox, first, then):
    result, before = _reinstall_under_flow(sandbox, first, then)
    assert result.returncode == 0, result.stderr
    after = _status(sandbox)
    assert after["config"]["exclude_outbound_ports"] == ["7001", "7002"], after["config"]
    if first == then == "ebpf":  # the programs stayed attached: the same ids, nothing compiled
        assert after["ebpf"]["programs"] == before["ebpf"]["programs"]
        steps = _steps(result)
        assert "compile" not in steps and "map:tp_excl_out_ports: add the new entries" in steps, steps
    if first != then:  # the first engine left nothing behind
        _assert_nothing_left_of(sandbox, first)


def _assert_nothing_left_of(sandbox: Sandbox, engine: str) -> None:
    if engine == "ebpf":
        assert sandbox.bpffs and not os.path.exists(os.path.join(sandbox.bpffs, "tpctl"))
        return
    if engine == "nftables":
        tables = sandbox.run(sandbox.app, ["nft", "list", "tables"], timeout=30).stdout
        assert "inet tpctl" not in tables, tables
        return
    saved = sandbox.run(sandbox.app, [f"iptables-{engine.split('-')[1]}-save"], timeout=30).stdout
    assert "TPCTL" not in saved and "tpctl/" not in saved, saved


@pytest.mark.parametrize("engine", sorted(HALF_WAY))
def test_a_reconfiguration_failing_half_way_leaves_the_previous_install_in_force(sandbox, engine):
    result, before = _reinstall_under_flow(sandbox, engine, engine, env={"TPCTL_FAULT_INJECT": HALF_WAY[engine]})
    assert result.returncode == 4, result.stderr
    assert _status(sandbox) == before  # the state file and the kernel: the previous install, whole


LAST_STEP_SWITCHES = [("ebpf", "iptables-nft"), ("iptables-legacy", "ebpf"), ("nftables", "iptables-legacy")]


@pytest.mark.parametrize(("first", "then"), LAST_STEP_SWITCHES, ids=[f"{a}-to-{b}" for a, b in LAST_STEP_SWITCHES])
def test_an_engine_switch_failing_at_its_last_step_leaves_the_first_engine_in_force(sandbox, first, then):
    """The last step, after the first engine's objects were taken off: they are put back."""
    result, before = _reinstall_under_flow(sandbox, first, then, env={"TPCTL_FAULT_INJECT": "record the install in the state file"})
    assert result.returncode == 4, result.stderr
    assert _status(sandbox) == before
    _assert_nothing_left_of(sandbox, then)


def _changed_programs(sandbox: Sandbox) -> str:
    """bpf_src with one comment more: another source, so the programs must be replaced."""
    import shutil

    import ebpf.settings

    copy = os.path.join(sandbox.tmp, "bpf_src_changed")
    shutil.copytree(ebpf.settings.DEFAULT_SOURCE_PATH, copy)
    with open(os.path.join(copy, "tp_connect.c"), "a", encoding="utf-8") as handle:
        handle.write("/* a newer tpctl */\n")
    return copy


def _map_ids(sandbox: Sandbox) -> dict[str, int]:
    from ebpf import libbpf, pins

    out = {}
    for name in pins.list_pins(sandbox.bpffs):
        if name.startswith("map_"):
            fd = pins.open_pin(os.path.join(pins.pin_dir(sandbox.bpffs), name))
            try:
                out[name] = libbpf.map_info(fd)["id"]
            finally:
                os.close(fd)
    return out


def _replaced_under_flow(sandbox: Sandbox, env: dict | None = None):
    """An eBPF install, then one from changed programs while a flow runs through HAProxy: the
    result, and the status, map ids and program ids from before it."""
    changed = ("--ebpf-programs-source-path", _changed_programs(sandbox))
    result, before, (maps, progs) = _reinstall_under_flow(
        sandbox, "ebpf", "ebpf", then_flags=(*BASE, *AFTER, *changed), env=env,
        noted=lambda: (_map_ids(sandbox), _prog_ids(sandbox)))
    return result, (before, maps, progs)


def test_new_ebpf_programs_take_the_old_ones_places_on_the_same_maps_without_a_gap(sandbox):
    result, (before, maps, old_ids) = _replaced_under_flow(sandbox)
    assert result.returncode == 0, result.stderr
    steps = _steps(result)
    assert "replace:tp_sock4_connect" in steps and "tc:replace:tp_tc_ingress" not in steps, steps  # inbound off
    assert not any(s.startswith(("attach:", "detach:")) for s in steps), steps  # every program swapped in place
    after = _status(sandbox)  # no drift: every recorded program is pinned and attached
    assert after["ebpf"]["programs"] == before["ebpf"]["programs"]
    new_ids = _prog_ids(sandbox)
    assert set(new_ids) == set(old_ids) and not set(new_ids.values()) & set(old_ids.values()), (old_ids, new_ids)
    assert _map_ids(sandbox) == maps  # the same maps, shared by the new programs
    assert after["ebpf"]["settings"]["tp_excl_out_ports"] == {"7001": 1, "7002": 1}, after["ebpf"]["settings"]


def _prog_ids(sandbox: Sandbox) -> dict[str, int]:
    with open(os.path.join(sandbox.state_dir, "state.json"), encoding="utf-8") as handle:
        return json.load(handle)["ebpf"]["prog_ids"]


def test_switching_dns_redirection_on_adds_its_programs_beside_the_swapped_ones(sandbox):
    result, _before = _reinstall_under_flow(sandbox, "ebpf", "ebpf", BASE, (*BASE, "--redirect-dns"))
    assert result.returncode == 0, result.stderr
    steps = _steps(result)
    assert "attach:tp_sock4_sendmsg" in steps and "replace:tp_sock4_connect" in steps, steps
    assert "tp_sock4_sendmsg" in _status(sandbox)["ebpf"]["programs"]


def test_a_program_replacement_failing_half_way_leaves_the_old_programs_attached(sandbox):
    result, (before, maps, old_ids) = _replaced_under_flow(sandbox, {"TPCTL_FAULT_INJECT": "replace:tp_sock4_connect"})
    assert result.returncode == 4, result.stderr
    assert "undo: replace:tp_sock4_connect" in result.stderr, result.stderr
    assert _status(sandbox) == before and _map_ids(sandbox) == maps and _prog_ids(sandbox) == old_ids


def test_inbound_connections_keep_going_through_the_sidecar_while_the_tc_programs_are_replaced(scene, sandbox):
    """The python sidecar of the standard scene (inbound on 15006): a client on the server host
    connects in to the app one connection after another while new programs replace the tc ones."""
    install(sandbox, "ebpf", "--ip-family-mode", "ipv4")
    scene.clear()
    with Flow(sandbox, sandbox.srv, APP_V4, 8080) as flow:
        result = sandbox.tpctl(*install_args("ebpf", sandbox, "--ip-family-mode", "ipv4", "--ebpf-programs-source-path",
                                             _changed_programs(sandbox)), "--verbose")
    assert result.returncode == 0, result.stderr
    steps = _steps(result)
    assert "tc:replace:tp_tc_ingress" in steps and "tc:replace:tp_tc_egress" in steps, steps
    assert flow.result["bypassed"] == 0 and flow.result["failed"] == 0 and flow.result["ok"] >= 5, flow.result
    assert len(scene.connections("inbound")) == flow.result["ok"]
    _status(sandbox)  # no drift: the new tc programs are the ones recorded


@pytest.mark.parametrize("inbound", ["on", "off"])
def test_switching_inbound_redirection_adds_or_removes_the_tc_programs_without_an_outbound_gap(sandbox, inbound):
    first, then = ("--redirect-inbound=false", "--redirect-inbound=true") if inbound == "on" else \
        ("--redirect-inbound=true", "--redirect-inbound=false")
    ipv4 = ("--ip-family-mode", "ipv4")
    result, _before = _reinstall_under_flow(sandbox, "ebpf", "ebpf", (*ipv4, first), (*ipv4, then))
    assert result.returncode == 0, result.stderr
    steps = _steps(result)
    tc_steps = {"on": "tc:filter:tp_tc_ingress", "off": "tc:remove:tp_tc_ingress"}
    assert tc_steps[inbound] in steps and "replace:tp_sock4_connect" in steps, steps
    programs = _status(sandbox)["ebpf"]["programs"]
    assert ("tp_tc_ingress" in programs) == (inbound == "on"), programs
    shown = sandbox.run(sandbox.app, ["tc", "filter", "show", "dev", sandbox.app_if, "ingress"]).stdout
    assert ("tp_tc_ingress" in shown) == (inbound == "on"), shown
