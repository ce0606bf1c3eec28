"""Property: whatever the configuration, whatever happens to the install (killed at a random
step, run twice, its state file deleted or damaged, an uninstall killed half-way), `tpctl
uninstall` leaves the app namespace exactly as before, and no command prints a traceback.

Random valid configurations per engine come from hypothesis. CI runs a few examples
(TPCTL_CHAOS_EXAMPLES, default 4); `make chaos` runs many more.
"""
from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@pytest.fixture
def foreign_sandbox(sandbox):
    add_foreign_rules(sandbox)
    return sandbox


@settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenarios())
def test_uninstall_always_restores_the_host_exactly(foreign_sandbox, scenario):
    sandbox = foreign_sandbox
    args = install_args(scenario["engine"], sandbox, *scenario["flags"])
    before = host_view(sandbox)
    if scenario["kill_at"] is not None:
        full = _ok(sandbox.tpctl(*args, "--verbose"), 0)  # the steps of a real install, then gone again
        steps = re.findall(r"^step: (.+)$", full.stderr, re.M)
        _ok(sandbox.tpctl("uninstall"), 0)
        step = steps[min(int(scenario["kill_at"] * len(steps)), len(steps) - 1)]
        _ok(sandbox.tpctl(*args, env={"TPCTL_SIGNAL_IN_STEP": f"{step}:KILL"}), -9)
    else:
        _ok(sandbox.tpctl(*args), 0)
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
    assert host_view(sandbox) == before, scenario
