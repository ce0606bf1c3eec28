"""pytest plugin for matrix guests (`-p tests.matrix.slow_guest`, added by vagrant/guest.py).

Under TCG a process takes about a second to start, and six of them start at once when a scene
comes up, so the sandbox's bounds, sized for a real machine, expire before anything is wrong:
wait_for_port's 10 s, the 10 s of each `ss` it runs, and each sandbox command's time-out. This
multiplies those bounds, and only them, by TPCTL_MATRIX_TIMEOUT_SCALE (default 8); what the
tests assert is unchanged. (Better: engine/sandbox reading one such scale itself.)
"""
from __future__ import annotations

import functools
import os
import subprocess

from engine.sandbox import netns

SCALE = float(os.environ.get("TPCTL_MATRIX_TIMEOUT_SCALE", "8"))


class _ScaledSubprocess:
    """netns's view of the subprocess module: run() with a longer time-out."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def run(*args, timeout: float | None = None, **kwargs):
        return subprocess.run(*args, timeout=None if timeout is None else timeout * SCALE, **kwargs)


def _scaled_wait(method):
    @functools.wraps(method)
    def wrapper(*args, timeout: float = 10, **kwargs):
        return method(*args, timeout=timeout * SCALE, **kwargs)
    return wrapper


def pytest_configure(config):
    if isinstance(netns.subprocess, _ScaledSubprocess):
        return
    netns.subprocess = _ScaledSubprocess()  # Sandbox.run (so tpctl and every client) and wait_for_port's ss
    netns.Sandbox.wait_for_port = _scaled_wait(netns.Sandbox.wait_for_port)
