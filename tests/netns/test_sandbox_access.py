"""The sidecar runs as uid 5678 from the checkout: a checkout that user cannot read is named, with
its fix, before any scene starts (a clone under /root, which Debian makes 0700)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from engine.sandbox import demo
from tests import conftest
from vagrant import matrix
from vagrant.kernels import MatrixError
from engine.sandbox.netns import PROXY_UID, SandboxError, check_runs_as

@pytest.fixture
def closed_python():
    """An interpreter under a directory only root may enter (as a venv under /root would be); its
    parent is open to all (pytest's own tmp_path is under a 0700 directory)."""
    parent = tempfile.mkdtemp(prefix="tpctl-access-", dir="/tmp")
    os.chmod(parent, 0o755)
    closed = os.path.join(parent, "closed")
    os.mkdir(closed, 0o700)
    wrapper = os.path.join(closed, "python")
    with open(wrapper, "w") as handle:
        handle.write(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    os.chmod(wrapper, 0o755)
    yield wrapper, closed
    shutil.rmtree(parent)


def test_this_checkout_runs_as_the_sidecars_user():
    check_runs_as(PROXY_UID)


def test_a_closed_directory_is_named_with_its_fix(closed_python):
    python, closed = closed_python
    with pytest.raises(SandboxError, match=rf"uid {PROXY_UID} .*Permission denied \(fix: chmod o\+x {closed},"):
        check_runs_as(PROXY_UID, python)


def test_the_demo_says_so_and_exits_2_leaving_nothing(closed_python, monkeypatch):
    python, closed = closed_python
    monkeypatch.setattr("engine.sandbox.scenario.check_runs_as", lambda uid: check_runs_as(uid, python))
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    said: list[str] = []
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert demo.run("iptables", said.append) == 2
    finally:
        signal.signal(signal.SIGTERM, handler)  # demo.run turns SIGTERM into Ctrl-C for its own process
    assert f"chmod o+x {closed}" in said[-1] and "the sandbox was removed" in said[-1]
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before


def test_pytest_stops_at_once_with_the_fix(closed_python, monkeypatch):
    python, closed = closed_python
    monkeypatch.setattr("engine.sandbox.netns.check_runs_as", lambda uid: check_runs_as(uid, python))
    with pytest.raises(pytest.exit.Exception, match=rf"chmod o\+x {closed}") as stopped:
        conftest.pytest_sessionstart(None)
    assert stopped.value.returncode == 2


def test_the_matrix_refuses_before_booting_a_guest(closed_python, monkeypatch):
    python, closed = closed_python
    monkeypatch.setattr(matrix, "check_runs_as", lambda uid: check_runs_as(uid, python))
    with pytest.raises(MatrixError, match=rf"chmod o\+x {closed}"):
        matrix.preflight()
