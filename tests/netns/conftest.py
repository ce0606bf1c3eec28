"""Fixtures for tests that install for real, in throwaway namespaces (root only)."""
from __future__ import annotations

import os
import subprocess

import pytest

from sandbox.netns import Sandbox
from sandbox.scenario import Scenario

ENGINES = {
    "iptables-nft": ["--iptables-backend", "nft"],
    "iptables-legacy": ["--iptables-backend", "legacy"],
    "ebpf": ["--experimental-transparent-proxy-engine", "--ebpf-enabled", "--no-fallback"],
    "nftables": ["--nftables-enabled", "--no-fallback"],
}
# The legacy backend's second applier (the same rendered plan through iptables-legacy-restore),
# which iptables-legacy above uses by itself where python-iptables fails its self-test: the
# netfilter lifecycle tests and tests/netns/test_legacy_appliers.py run it everywhere.
LEGACY_RESTORE = {"iptables-legacy-restore": ["--iptables-backend", "legacy", "--legacy-applier", "restore"]}


def engine_flags(engine: str, sandbox: Sandbox) -> list[str]:
    """The flags that select `engine`; eBPF attaches to the sandbox's cgroup, bpffs and veth."""
    flags = list({**ENGINES, **LEGACY_RESTORE}[engine])
    if engine == "ebpf":
        flags += ["--ebpf-cgroup-path", sandbox.cgroup, "--ebpf-bpffs-path", sandbox.mount_bpffs(),
                  "--ebpf-tc-attach-iface", sandbox.app_if]
    return flags


@pytest.fixture(autouse=True)
def _root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root: installs rules in throwaway network namespaces")


@pytest.fixture
def sandbox():
    with Sandbox("tpt") as sb:
        yield sb


@pytest.fixture
def scene(sandbox):
    return Scenario(sandbox).start()


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """The engine under test, as the install flags that select it."""
    return request.param


def install_args(engine: str, sandbox: Sandbox, *extra: str) -> list[str]:
    return ["install", "--kuma-dp-user", "5678", "--resolv-conf", sandbox.resolv_conf,
            "--max-retries", "0", *engine_flags(engine, sandbox), *extra]


def install(sandbox: Sandbox, engine: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = sandbox.tpctl(*install_args(engine, sandbox, *extra), env=env)
    assert result.returncode == 0, f"install failed ({result.returncode}): {result.stderr}"
    return result


def snapshot(sandbox: Sandbox) -> dict[str, str]:
    """Every table of both backends and both families in the app namespace, normalised:
    counters dropped, tables keyed by name, and a table with no rule, no chain of its own and
    only ACCEPT policies left out. The kernel instantiates such a table on first look (legacy
    iptables-save, python-iptables), which changes nothing a packet meets."""
    from engine.iptables.live import normalize_save, parse_save

    out = {}
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
        result = sandbox.run(sandbox.app, [tool], timeout=30)
        tables = parse_save(normalize_save(result.stdout))
        for name in sorted(tables):
            table = tables[name]
            if table.rules or any(policy != "ACCEPT" for policy in table.chains.values()):
                out[f"{tool} {name}"] = "\n".join(
                    [f":{c} {p}" for c, p in table.chains.items()] + [f"-A {c} {s}" for c, s in table.rules])
    return out


def add_foreign_rules(sandbox: Sandbox) -> None:
    """Rules of another owner in every table we touch, in both backends and families."""
    script = ("*raw\n-A PREROUTING -p udp --dport 5353 -j NOTRACK\n-A OUTPUT -p udp --dport 5353 -j NOTRACK\nCOMMIT\n"
              "*nat\n:FOREIGN_CHAIN - [0:0]\n-A PREROUTING -p tcp --dport 2222 -j REDIRECT --to-ports 22\n"
              "-A OUTPUT -p tcp --dport 7777 -j FOREIGN_CHAIN\n-A FOREIGN_CHAIN -j RETURN\n"
              "-A POSTROUTING -o lo -j ACCEPT\nCOMMIT\n"
              "*mangle\n-A PREROUTING -p tcp --dport 2222 -j MARK --set-mark 7\nCOMMIT\n"
              "*filter\n-A INPUT -p tcp --dport 2223 -j ACCEPT\nCOMMIT\n")
    for tool in ("iptables-legacy-restore", "ip6tables-legacy-restore", "iptables-nft-restore", "ip6tables-nft-restore"):
        sandbox.run(sandbox.app, [tool, "--noflush"], input=script, check=True)
