"""An unmodified proxy works with either engine: HAProxy (Debian's package) as the sidecar.

`server o 0.0.0.0` makes HAProxy forward each connection to its SO_ORIGINAL_DST, which
conntrack answers under iptables and the cgroup/getsockopt program under eBPF. HAProxy reads
the original destination of IPv4 connections only, so this test is IPv4.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from sandbox.netns import SRV_V4
from sandbox.scenario import PEERS
from tests.netns.conftest import install

CONFIG = """global
  maxconn 64
defaults
  mode tcp
  log stdout format raw local0
  option tcplog
  timeout connect 5s
  timeout client 10s
  timeout server 10s
listen outbound
  bind 0.0.0.0:15001
  server original 0.0.0.0
"""


def test_haproxy_forwards_redirected_connections_to_their_original_destination(sandbox, engine):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is missing: scripts/setup.sh installs it")
    config = os.path.join(sandbox.tmp, "haproxy.cfg")
    log = os.path.join(sandbox.tmp, "haproxy.log")
    with open(config, "w") as handle:
        handle.write(CONFIG)
    os.chmod(sandbox.tmp, 0o755)
    sandbox.spawn(sandbox.srv, sandbox.python(PEERS, "greeter", "--port", "9000"))
    sandbox.spawn(sandbox.app, [haproxy, "-db", "-f", config], uid=5678, log=log)
    sandbox.wait_for_port(sandbox.srv, 9000)
    sandbox.wait_for_port(sandbox.app, 15001)
    install(sandbox, engine, "--redirect-inbound=false", "--ip-family-mode", "ipv4")
    result = sandbox.run(sandbox.app, sandbox.python(PEERS, "tcp", SRV_V4, "9000"), timeout=30)
    assert f'"reply": "hello from {SRV_V4}:9000' in result.stdout, result.stdout + result.stderr
    deadline = time.monotonic() + 5
    while "outbound outbound/original" not in open(log).read() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "outbound outbound/original" in open(log).read(), open(log).read()  # frontend backend/server
