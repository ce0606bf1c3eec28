"""`tpctl demo` runs end to end and leaves the host untouched, also when interrupted."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest


def _leftovers(sandbox_id: str) -> list[str]:
    found = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if sandbox_id in ns]
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if sandbox_id in d]
        if root.count("/") > 4:
            dirs[:] = []
    return found


@pytest.mark.parametrize("engine, installed", [("auto", "installed the eBPF engine"),
                                               ("iptables", "installed the iptables engine"),
                                               ("nftables", "installed the nftables engine")])
def test_demo_shows_redirected_traffic_and_cleans_up(engine, installed):
    result = subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--engine", engine],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed in result.stdout
    assert "'original_dst': '198.18.0.2:9000'" in result.stdout
    assert "'reply_from': '198.18.0.2:53', 'answer': '198.19.255.53'" in result.stdout
    assert "tpctl: not installed" in result.stdout
    sandbox_id = re.search(r"tpdemo-(\w+)-app", result.stdout).group(1)
    assert _leftovers(sandbox_id) == []


def test_demo_interrupted_with_ctrl_c_removes_the_sandbox():
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "demo", "--engine", "iptables"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, deadline = "", time.monotonic() + 120
    while "tpctl: installed" not in output and time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            output += proc.stdout.readline()
    assert "tpctl: installed" in output, output
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), output + rest
    sandbox_id = re.search(r"tpdemo-(\w+)-app", output).group(1)
    assert _leftovers(sandbox_id) == []
