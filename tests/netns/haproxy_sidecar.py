"""Debian's unmodified HAProxy as the sidecar (uid 5678 on :15001): `server original 0.0.0.0`
forwards each connection to its SO_ORIGINAL_DST, which conntrack answers under iptables and the
cgroup/getsockopt program under eBPF, and logs one line per connection it forwarded. HAProxy
reads the original destination of IPv4 connections only, so its tests are IPv4."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from sandbox.netns import PROXY_UID, Sandbox

CONFIG = """global
  maxconn 256
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
FORWARDED = "outbound outbound/original"  # frontend backend/server of each forwarded connection's log line


def start(sandbox: Sandbox) -> str:
    """HAProxy in the app namespace as the proxy uid; returns its log's path."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is missing: scripts/setup.sh installs it")
    config = os.path.join(sandbox.tmp, "haproxy.cfg")
    log = os.path.join(sandbox.tmp, "haproxy.log")
    with open(config, "w") as handle:
        handle.write(CONFIG)
    os.chmod(sandbox.tmp, 0o755)
    sandbox.spawn(sandbox.app, [haproxy, "-db", "-f", config], uid=PROXY_UID, log=log)
    sandbox.wait_for_port(sandbox.app, 15001)
    return log


def forwarded(log: str, at_least: int = 1, timeout: float = 5) -> int:
    """How many connections HAProxy logged as forwarded, once it has logged `at_least` (or the
    time is up): it logs a connection when it closes."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log, encoding="utf-8", errors="replace") as handle:
            count = handle.read().count(FORWARDED)
        if count >= at_least or time.monotonic() >= deadline:
            return count
        time.sleep(0.1)
