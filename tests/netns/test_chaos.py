"""Property: whatever the configuration, whatever happens to the install (killed at a random
step, run twice, its state file deleted or damaged, an uninstall killed half-way), `tpctl
uninstall` leaves the app namespace exactly as before, and no command prints a traceback.
Another owner's objects sit beside tpctl's throughout: iptables rules in every table, and, from
the first install on, tc filters on the app interface's clsact (tpctl's own when it made one) and
a BPF program on the same cgroup; they must outlive every uninstall unchanged.

Random valid configurations per engine come from hypothesis. CI runs a few examples
(TPCTL_CHAOS_EXAMPLES, default 4); `make chaos` runs many more.
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpf import libbpf
from tests.netns.conftest import add_foreign_rules, install_args
from tests.netns.host_view import host_view

EXAMPLES = int(os.environ.get("TPCTL_CHAOS_EXAMPLES", "4"))
PORTS = st.integers(min_value=1024, max_value=65000).filter(lambda p: p not in (15001, 15006, 15053))


@st.composite
def configurations(draw) -> list[str]:
    """Flags every engine honours (eBPF falls back for the others, which is not this test)."""
    flags: list[str] = []
    if draw(st.booleans()):
        flags += ["--exclude-outbound-ports", ",".join(map(str, draw(st.lists(PORTS, min_size=1, max_size=4,
                                                                                   unique=True))))]
    if draw(st.booleans()):
        flags += ["--exclude-inbound-ports", ",".join(map(str, draw(st.lists(PORTS, min_size=1, max_size=3,
                                                                                  unique=True))))]
    if draw(st.booleans()):
        nets = draw(st.lists(st.sampled_from(["198.18.200.0/24", "198.19.0.0/16", "2001:2:0:9::/64",
                                              "198.18.0.99/32"]), min_size=1, max_size=3, unique=True))
        flags += ["--exclude-outbound-ips", ",".join(nets)]
    if draw(st.booleans()):
        lo = draw(PORTS)
        flags += ["--exclude-outbound-ports-for-uids", f"tcp:{lo}-{lo + 10}:{draw(st.integers(1000, 2000))}"]
    flags += draw(st.sampled_from([[], ["--redirect-dns"], ["--redirect-all-dns-traffic"]]))
    flags += draw(st.sampled_from([[], ["--ip-family-mode", "ipv4"], ["--redirect-inbound=false"]]))
    return flags


@st.composite
def scenarios(draw) -> dict:
    return {"engine": draw(st.sampled_from(["iptables-nft", "iptables-legacy", "ebpf"])),
            "flags": draw(configurations()),
            "kill_at": draw(st.none() | st.floats(min_value=0, max_value=1)),  # a share of the steps
            "twice": draw(st.booleans()),
            "state": draw(st.sampled_from(["kept", "deleted", "damaged"])),
            "kill_uninstall": draw(st.sampled_from([None, "uninstall:ebpf", "uninstall:iptables"]))}


def _ok(result, *codes: int):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode in codes, (result.returncode, result.stderr[-600:])
    return result


# another tool's classic-BPF tc filter (accept all) at its own pref; a cgroup/connect4 program
# that allows every connect ("r0 = 1; exit"), attached with BPF_F_ALLOW_MULTI as tpctl's are
FOREIGN_FILTER = ["protocol", "all", "pref", "7", "bpf", "bytecode", "1,6 0 0 0,", "classid", "1:1"]
PROG_CGROUP_SOCK_ADDR, CGROUP_INET4_CONNECT = 18, 10
ALLOW_ALL = (ct.c_uint64 * 2)(0x00000001_000000B7, 0x95)


class ForeignKernelObjects:
    """tc filters and a cgroup program of another owner, added and taken away by the test."""

    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.prog_fd = libbpf.prog_load(PROG_CGROUP_SOCK_ADDR, ct.addressof(ALLOW_ALL), ct.sizeof(ALLOW_ALL),
                                        b"GPL", CGROUP_INET4_CONNECT, "foreign_allow")
        self.cgroup_fd = os.open(sandbox.cgroup, os.O_RDONLY | os.O_DIRECTORY)

    def _tc(self, *argv: str, check: bool = True):
        return self.sandbox.run(self.sandbox.app, ["tc", *argv], check=check)

    def add(self) -> None:
        if "clsact" not in self._tc("qdisc", "show", "dev", self.sandbox.app_if).stdout:
            self._tc("qdisc", "add", "dev", self.sandbox.app_if, "clsact")
        for direction in ("ingress", "egress"):
            self._tc("filter", "add", "dev", self.sandbox.app_if, direction, *FOREIGN_FILTER)
        libbpf.prog_attach(self.prog_fd, self.cgroup_fd, CGROUP_INET4_CONNECT, libbpf.BPF_F_ALLOW_MULTI)

    def remove(self) -> None:
        """The owner's own cleanup: its clsact (tpctl's filters, if any, are gone by then)."""
        self._tc("qdisc", "del", "dev", self.sandbox.app_if, "clsact", check=False)
        with contextlib.suppress(OSError):
            libbpf.prog_detach(self.prog_fd, self.cgroup_fd, CGROUP_INET4_CONNECT)

    def close(self) -> None:
        self.remove()
        os.close(self.prog_fd)
        os.close(self.cgroup_fd)


@pytest.fixture
def foreign_sandbox(sandbox):
    add_foreign_rules(sandbox)
    return sandbox


@pytest.fixture
def foreign_kernel(foreign_sandbox):
    objects = ForeignKernelObjects(foreign_sandbox)
    yield objects
    objects.close()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenarios())
def test_uninstall_always_restores_the_host_exactly(foreign_sandbox, foreign_kernel, scenario):
    sandbox = foreign_sandbox
    args = install_args(scenario["engine"], sandbox, *scenario["flags"])
    before = host_view(sandbox)
    foreign_kernel.add()  # what the host looks like with the other owner's objects and no tpctl
    expected = host_view(sandbox)
    foreign_kernel.remove()
    assert host_view(sandbox) == before
    if scenario["kill_at"] is not None:
        full = _ok(sandbox.tpctl(*args, "--verbose"), 0)  # the steps of a real install, then gone again
        steps = re.findall(r"^step: (.+)$", full.stderr, re.M)
        _ok(sandbox.tpctl("uninstall"), 0)
        step = steps[min(int(scenario["kill_at"] * len(steps)), len(steps) - 1)]
        _ok(sandbox.tpctl(*args, env={"TPCTL_SIGNAL_IN_STEP": f"{step}:KILL"}), -9)
    else:
        _ok(sandbox.tpctl(*args), 0)
    foreign_kernel.add()  # on tpctl's clsact when it made one, beside its cgroup programs
    if scenario["twice"]:
        _ok(sandbox.tpctl(*args), 0)
    _ok(sandbox.tpctl("status"), 0, 5)
    path = os.path.join(sandbox.state_dir, "state.json")
    if scenario["state"] == "deleted" and os.path.exists(path):
        os.unlink(path)
    elif scenario["state"] == "damaged":
        with open(path, "w", encoding="utf-8") as handle:
            handle.write('{"version": 1, "engine": "nft"')
    _ok(sandbox.tpctl("status", "--json"), 0, 5)
    if scenario["kill_uninstall"]:  # killed half-way: the state file is still there for the next one
        _ok(sandbox.tpctl("uninstall", env={"TPCTL_SIGNAL_IN_STEP": f"{scenario['kill_uninstall']}:KILL"}), -9)
    _ok(sandbox.tpctl("uninstall"), 0)
    assert host_view(sandbox) == expected, scenario
    foreign_kernel.remove()  # the next example starts from the same host
    assert host_view(sandbox) == before, scenario
