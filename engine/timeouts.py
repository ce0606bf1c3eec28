"""Every time limit tpctl and its sandbox set on a command, sized for a real machine.

A slow host (the kernel matrix's emulated guests, where loading ip_tables and python-iptables on
first use takes minutes) stretches them all with TPCTL_TIMEOUT_SCALE; 1 on a real machine. A limit
only turns a hang into an error: stretching it never changes what succeeds.
"""
from __future__ import annotations

import os

TIMEOUT_SCALE = float(os.environ.get("TPCTL_TIMEOUT_SCALE", "1"))


def bound(seconds: float) -> float:
    """A time-out of `seconds` on a real machine, on this one."""
    return seconds * TIMEOUT_SCALE
