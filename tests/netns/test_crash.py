"""Crash consistency: a lost or damaged state file, two installs at once (kill -9 inside each
install step is in test_interrupts.py). Afterwards `tpctl uninstall` leaves the app namespace
exactly as before the first install, and nothing prints a traceback."""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess

import pytest

from tests.netns.conftest import install, install_args
from tests.netns.host_view import host_view

ENGINES = ["iptables-nft", "iptables-legacy", "ebpf", "nftables"]


def unmounted_bpffs_args(sandbox, args: list[str]) -> list[str]:
    """The eBPF engine given a bpffs path nobody mounted: install mounts it, and owns that."""
    if "--ebpf-bpffs-path" not in args:
        return args
    path = os.path.join(sandbox.tmp, "own-bpffs")
    os.makedirs(path, exist_ok=True)
    at = args.index("--ebpf-bpffs-path")
    return [*args[:at + 1], path, *args[at + 2:]]


def no_traceback(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


@pytest.mark.parametrize("engine", ENGINES)
def test_uninstall_without_the_state_file_restores_the_host_exactly(sandbox, engine):
    """::6/128, the nf_tables tables and base chains install created and the bpffs it mounted
    carry no tag: the journal, kept beside the state file, is their owner record."""
    args = unmounted_bpffs_args(sandbox, install_args(engine, sandbox))
    before = host_view(sandbox)
    assert no_traceback(sandbox.tpctl(*args)).returncode == 0
    os.unlink(os.path.join(sandbox.state_dir, "state.json"))
    status = no_traceback(sandbox.tpctl("status", *(["--ebpf-bpffs-path", args[args.index("--ebpf-bpffs-path") + 1]]
                                                    if engine == "ebpf" else [])))
    assert status.returncode == 5 and "::6/128 on lo (the journal says tpctl added it)" in status.stdout, status.stdout
    assert no_traceback(sandbox.tpctl("uninstall")).returncode == 0
    assert host_view(sandbox) == before


def test_a_replacing_install_keeps_owning_what_the_first_made(sandbox):
    """Two installs at once are serialised by the state lock; the second replaces the first and
    inherits ::6/128 and the nf_tables scaffold, so one uninstall removes everything."""
    before = host_view(sandbox)
    first = install_args("iptables-nft", sandbox)
    second = install_args("iptables-nft", sandbox, "--exclude-outbound-ports", "9001")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two tpctl processes at once
        results = list(pool.map(lambda argv: sandbox.tpctl(*argv), (first, second)))
    for result in results:
        assert no_traceback(result).returncode == 0, result.stderr
    record = json.load(open(os.path.join(sandbox.state_dir, "state.json"), encoding="utf-8"))
    assert record["ipv6_passthrough_added"] is True
    assert no_traceback(sandbox.tpctl("uninstall")).returncode == 0
    assert host_view(sandbox) == before


@pytest.mark.parametrize("content", ["", "garbage{", "[1, 2]", "42", "null", '{"version": 1}',
                                     '{"version": 1, "engine": "ebpf", "iptables": {}}',
                                     '{"version": 1, "engine": "iptables"}', '{"version": 99, "engine": "iptables"}',
                                     '{"version": 1, "engine": ["x"], "iptables": []}'])
def test_a_damaged_state_file_is_named_never_a_traceback_and_uninstall_still_cleans(sandbox, content):
    before = host_view(sandbox)
    install(sandbox, "iptables-nft")
    path = os.path.join(sandbox.state_dir, "state.json")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    status = no_traceback(sandbox.tpctl("status"))
    assert status.returncode == 5 and path in status.stdout + status.stderr, status.stdout + status.stderr
    report = json.loads(no_traceback(sandbox.tpctl("status", "--json")).stdout)
    assert report["installed"] is False and any(path in d for d in report["drift"])
    uninstall = no_traceback(sandbox.tpctl("uninstall"))
    assert uninstall.returncode == 0 and path in uninstall.stderr, uninstall.stderr
    assert host_view(sandbox) == before


@pytest.mark.parametrize("engine", ENGINES)
def test_an_uninstall_killed_half_way_is_finished_by_the_next(sandbox, engine):
    args = unmounted_bpffs_args(sandbox, install_args(engine, sandbox))
    before = host_view(sandbox)
    for point in ("uninstall:ebpf", "uninstall:nftables", "uninstall:iptables"):
        assert no_traceback(sandbox.tpctl(*args)).returncode == 0
        killed = sandbox.tpctl("uninstall", env={"TPCTL_SIGNAL_IN_STEP": f"{point}:KILL"})
        assert killed.returncode == -9, killed.stderr
        assert no_traceback(sandbox.tpctl("uninstall")).returncode == 0
        assert host_view(sandbox) == before, point


def test_switching_engines_leaves_nothing_of_the_first(sandbox):
    """iptables-nft, then eBPF, nftables, iptables-legacy: each replaces the last (the nf_tables
    tables the first created included), and one uninstall leaves the host as before."""
    installs = [(engine, unmounted_bpffs_args(sandbox, install_args(engine, sandbox)))
                for engine in ("iptables-nft", "ebpf", "nftables", "iptables-legacy", "iptables-nft")]
    before = host_view(sandbox)  # with the sandbox's own bpffs, which install_args mounts, in it
    for engine, args in installs:
        assert no_traceback(sandbox.tpctl(*args)).returncode == 0
        if engine == "ebpf":  # nothing of iptables-nft is left: not even the tables it created
            assert host_view(sandbox)["nft"] == before["nft"]
    assert no_traceback(sandbox.tpctl("uninstall")).returncode == 0
    assert host_view(sandbox) == before
