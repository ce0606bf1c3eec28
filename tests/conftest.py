"""Shared pytest wiring.

Privileged tests skip without root (a developer laptop), but with TPCTL_NO_SKIP=1 (set by
.ci/run) any skipped test fails the run: in CI a skipped privileged test is a failure.
"""
from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session, exitstatus):
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
