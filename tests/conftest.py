"""Shared pytest wiring.

Privileged tests skip without root (a developer laptop), but with TPCTL_NO_SKIP=1 (set by
.ci/run) any skipped test fails the run: in CI a skipped privileged test is a failure.
"""
from __future__ import annotations

import os
import signal

import pytest


def pytest_sessionstart(session):
    """As root the privileged tests run the sidecar as uid 5678 from this checkout: say at once,
    with the fix, when that user cannot (a clone under /root), not as a port timeout per test.

    A suite started in the background (nohup, some CI runners) inherits SIGINT ignored, and so
    would every tpctl it starts: the interrupt tests need a tpctl that Ctrl-C reaches, as from a
    terminal (and SIGHUP, which nohup ignores, as from a closing session). A handled signal is
    reset to its default in a child, an ignored one is not."""
    # no test writes the host's /etc: `install --persist` anywhere in the suite (the sandbox sets
    # its own) writes under a throwaway root
    if "TPCTL_PERSIST_ROOT" not in os.environ:
        import tempfile

        os.environ["TPCTL_PERSIST_ROOT"] = tempfile.mkdtemp(prefix="tpctl-test-root-")
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # nohup: the suite itself keeps ignoring a
        signal.signal(signal.SIGHUP, lambda signum, frame: None)  # hangup, the tpctl it starts does not
    if os.geteuid() != 0:
        return
    from sandbox.netns import PROXY_UID, SandboxError, check_runs_as
    try:
        check_runs_as(PROXY_UID)
    except SandboxError as err:
        pytest.exit(str(err), returncode=2)


def pytest_sessionfinish(session, exitstatus):
    root = os.environ.get("TPCTL_PERSIST_ROOT", "")
    if os.path.basename(root).startswith("tpctl-test-root-"):
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if os.environ.get("TPCTL_NO_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"TPCTL_NO_SKIP=1: {skipped} test(s) were skipped; failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0
