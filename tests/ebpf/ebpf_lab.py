"""Fixtures for the eBPF tests. Root tests drive the eBPF engine in-process against the sandbox
(sandbox/netns.py: throwaway namespaces, a child cgroup, a bpffs on a fresh temp dir, all
removed after) and its standard scene (sandbox/scenario.py) on ports of their own."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from sandbox.netns import Sandbox  # noqa: E402
from sandbox.scenario import Scenario  # noqa: E402

# the server's 8080, 9090 (an excluded port) and 7070 (excluded for one uid); the app's 8080 and
# 2222 (an excluded inbound port)
SERVER_PORTS, APP_PORTS = (8080, 9090, 7070), (8080, 2222)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, cgroup, bpf)")


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


@pytest.fixture
def sandbox():
    """What tpctl install would add, and these tests, which call the engine directly, must:
    ::6 on the app host's lo (the sidecar's IPv6 inbound passthrough source), and an empty bpffs
    directory that the engine mounts itself."""
    with Sandbox("tpe") as sb:
        assert sb.cgroup, "no cgroup2 mount: the eBPF tests attach to a child cgroup of it"
        sb.add_address(sb.app, "::6/128")
        sb.bpffs_dir()
        yield sb


@pytest.fixture
def scene(sandbox):
    return Scenario(sandbox, server_ports=SERVER_PORTS, app_ports=APP_PORTS).start()
