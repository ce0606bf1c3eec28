"""Fixtures for the hostile-input and hostile-environment suites (issues "Nothing gets past the
sidecar" and "Uninstall destroys only what it can prove"): the netns suite's sandbox and scene,
each case in throwaway namespaces, a child cgroup, a private bpffs and a temp state dir. Pure
cases (parsing, planning) need no root; a case that asks for `sandbox` skips without it (and
fails under TPCTL_NO_SKIP=1, as everywhere)."""
from __future__ import annotations

import os

import pytest

from sandbox.netns import Sandbox
from sandbox.scenario import Scenario


@pytest.fixture
def sandbox():
    if os.geteuid() != 0:
        pytest.skip("needs root: attacks a real install in throwaway network namespaces")
    with Sandbox("tph") as sb:
        yield sb


@pytest.fixture
def scene(sandbox):
    return Scenario(sandbox).start()
