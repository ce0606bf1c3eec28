"""The sidecar runs as uid 5678: from a checkout that user cannot enter (a clone under /root,
which Debian makes 0700) the sandbox runs it from a copy of its own, with the interpreter itself;
an interpreter that user cannot run is named, with its fix, before any scene starts."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from sandbox import demo
from sandbox.netns import PROXY_UID, SandboxError, check_runs_as
from tests import conftest
from vagrant import matrix
from vagrant.kernels import MatrixError


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


def test_the_demo_runs_from_a_checkout_and_venv_only_root_may_enter(closed_python):
    """`git clone` into a 0700 home, then `sudo make demo`: the sidecar must not need to enter it."""
    import site
    import sysconfig

    _, closed = closed_python
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    copy = os.path.join(closed, "tpctl")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(repo, name)):
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy2(os.path.join(repo, name), os.path.join(copy, name))
    # a "venv" inside the closed directory: its python links to the interpreter, as venv makes it
    os.makedirs(os.path.join(closed, "venv", "bin"))
    python = os.path.join(closed, "venv", "bin", "python")
    os.symlink(os.path.realpath(sys.executable), python)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([copy, *site.getsitepackages(), sysconfig.get_paths()["purelib"]]))
    where = subprocess.run([python, "-c", "import sandbox.netns as m; print(m.__file__)"], env=env,
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert where.stdout.startswith(copy), where  # the demo below runs the closed copy
    result = subprocess.run([python, "-m", "engine.cli", "demo", "--engine", "iptables"], env=env, cwd="/",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "'original_dst': '198.18.0.2:9000'" in result.stdout


def test_a_closed_directory_is_named_with_its_fix(closed_python):
    python, closed = closed_python
    with pytest.raises(SandboxError, match=rf"uid {PROXY_UID} .*Permission denied \(fix: chmod o\+x {closed},"):
        check_runs_as(PROXY_UID, python)


def test_the_demo_says_so_and_exits_2_leaving_nothing(closed_python, monkeypatch):
    python, closed = closed_python
    monkeypatch.setattr("sandbox.scenario.check_runs_as", lambda uid: check_runs_as(uid, python))
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
    monkeypatch.setattr("sandbox.netns.check_runs_as", lambda uid: check_runs_as(uid, python))
    with pytest.raises(pytest.exit.Exception, match=rf"chmod o\+x {closed}") as stopped:
        conftest.pytest_sessionstart(None)
    assert stopped.value.returncode == 2


def test_the_matrix_refuses_before_booting_a_guest(closed_python, monkeypatch):
    python, closed = closed_python
    monkeypatch.setattr(matrix, "check_runs_as", lambda uid: check_runs_as(uid, python))
    with pytest.raises(MatrixError, match=rf"chmod o\+x {closed}"):
        matrix.preflight()


def test_another_uids_processes_start_where_that_user_may_be(closed_python, sandbox):
    """From a checkout in a 0700 home, a process of the proxy's uid must not start in it: HAProxy
    refuses to run when it cannot chdir back to where it began."""
    _, closed = closed_python
    here = os.getcwd()
    os.chdir(closed)
    try:
        ran = sandbox.run(sandbox.app, ["sh", "-c", "pwd && cd \"$PWD\""], uid=PROXY_UID, timeout=30)
        log = os.path.join(sandbox.tmp, "where.log")
        started = sandbox.spawn(sandbox.app, ["sh", "-c", "cd \"$PWD\" && pwd"], uid=PROXY_UID, log=log)
        assert started.wait(timeout=30) == 0, open(log).read()
    finally:
        os.chdir(here)
    assert ran.returncode == 0 and ran.stdout.strip() == sandbox.tmp, (ran.stdout, ran.stderr)
