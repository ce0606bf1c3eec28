"""SIGINT and SIGTERM inside each install step leave the host exactly as before.

The signal is sent by the process to itself inside the step, after the step's kernel call and
before its undo is recorded (TPCTL_SIGNAL_IN_STEP): the moment a naive transaction leaks the
object. The steps are the ones a verbose install names, so a new step is covered without
editing this file. Compared: every iptables table of both backends and families, the nft
ruleset, cgroup attachments, tc qdiscs and filters, the bpffs, lo's addresses, the state file.
"""
from __future__ import annotations

import os
import re

import pytest

from tests.netns.conftest import install, install_args, snapshot

EXIT = {"INT": 130, "TERM": 143}


def host_view(sandbox) -> dict:
    view = {f"iptables {k}": v for k, v in snapshot(sandbox).items()}
    view["nft"] = nft_ruleset(sandbox.run(sandbox.app, ["nft", "list", "ruleset"]).stdout)
    view["lo"] = sandbox.run(sandbox.app, ["ip", "addr", "show", "dev", "lo"]).stdout
    view["tc qdisc"] = sandbox.run(sandbox.app, ["tc", "qdisc", "show", "dev", sandbox.app_if]).stdout
    view["tc filters"] = "".join(sandbox.run(sandbox.app, ["tc", "filter", "show", "dev", sandbox.app_if, d]).stdout
                                 for d in ("ingress", "egress"))
    view["cgroup"] = sandbox.run(sandbox.app, ["bpftool", "cgroup", "show", sandbox.cgroup]).stdout
    bpffs = os.path.join(sandbox.tmp, "bpffs")
    view["bpffs"] = sorted(os.listdir(bpffs)) if os.path.isdir(bpffs) else None
    view["mounted bpffs"] = sorted(line.split()[4] for line in open("/proc/self/mountinfo", encoding="utf-8")
                                   if line.split()[4].startswith(sandbox.tmp))
    view["state"] = os.path.exists(os.path.join(sandbox.state_dir, "state.json"))
    return view


def nft_ruleset(text: str) -> dict:
    """`nft list ruleset` as {table: {chain: [lines]}}: the order of rules in a chain counts, the
    order in which tables and chains are listed (their creation order) does not."""
    tables: dict = {}
    table = chain = None
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("table "):
            table = tables.setdefault(line.rstrip(" {"), {})
        elif line.startswith("chain ") and table is not None:
            chain = table.setdefault(line.rstrip(" {"), [])
        elif line and line != "}" and chain is not None:
            chain.append(line)
    return tables


def steps_of(sandbox, args: list[str]) -> list[str]:
    """The steps a verbose install runs, from its own log; then uninstalled again."""
    result = sandbox.tpctl(*args, "--verbose")
    assert result.returncode == 0, result.stderr
    assert sandbox.tpctl("uninstall").returncode == 0
    return re.findall(r"^step: (.+)$", result.stderr, re.M)


def signal_plan(steps: list[str]) -> list[tuple[str, str]]:
    """(step, signal) pairs: the first step of each kind (compile, load:, pin:, map:, attach:,
    tc:, ...) gets both signals, every other step of the kind one, alternating; of the many
    alike load:, pin: and map: steps only the last besides. Both signals reach the same handler:
    this keeps CI's cost at about one install per step."""
    kinds: dict[str, list[str]] = {}
    for step in steps:
        kinds.setdefault(step.split(":")[0], []).append(step)
    plan = []
    for kind, members in kinds.items():
        if kind in ("load", "pin", "map") and len(members) > 2:
            members = [members[0], members[-1]]
        plan += [(members[0], "INT"), (members[0], "TERM")]
        plan += [(step, ("TERM", "INT")[n % 2]) for n, step in enumerate(members[1:])]
    return plan


def interrupted_installs_leave_nothing(sandbox, args: list[str], steps: list[str]) -> list[str]:
    problems = []
    before = host_view(sandbox)
    for step, sig in signal_plan(steps):
        result = sandbox.tpctl(*args, env={"TPCTL_SIGNAL_IN_STEP": f"{step}:{sig}"})
        if result.returncode != EXIT[sig] or "rolled back" not in result.stderr:
            problems.append(f"{step} SIG{sig}: exit {result.returncode}: {result.stderr[-300:]}")
        after = host_view(sandbox)
        if after != before:
            changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            problems.append(f"{step} SIG{sig}: the host changed: {changed}")
            before = after  # report each leak once
    return problems


@pytest.mark.parametrize("engine", ["iptables-nft", "iptables-legacy", "ebpf"])
def test_sigint_and_sigterm_in_any_install_step_roll_everything_back(sandbox, engine):
    args = install_args(engine, sandbox)
    steps = steps_of(sandbox, args)
    assert "record the install in the state file" in steps and len(steps) >= 3, steps
    if engine == "ebpf":
        assert {"compile", "tc:qdisc", "attach:tp_sock4_connect", "meta"} <= set(steps), steps
    problems = interrupted_installs_leave_nothing(sandbox, args, steps)
    assert not problems, "\n".join(problems)


def test_an_interrupted_replacing_install_puts_the_previous_rules_back(sandbox):
    """Replacing an install: the previous rules are removed as undoable steps of the same
    transaction, so an interrupt at any of them (or later) leaves the previous install running."""
    install(sandbox, "iptables-nft")
    args = install_args("iptables-nft", sandbox, "--exclude-outbound-ports", "9001")
    result = sandbox.tpctl(*args, "--verbose")
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"^step: (.+)$", result.stderr, re.M)
    assert any(s.startswith("remove previous tpctl rules") for s in steps), steps
    install(sandbox, "iptables-nft")  # back to the first configuration, which the interrupts must keep
    problems = interrupted_installs_leave_nothing(sandbox, args, steps)
    assert not problems, "\n".join(problems)
