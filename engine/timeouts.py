"""Every time limit tpctl and its sandbox set on a command, sized for a real machine.

A slow host (the kernel matrix's emulated guests, where loading ip_tables and python-iptables on
first use takes minutes) stretches them all with TPCTL_TIMEOUT_SCALE; 1 on a real machine. A limit
only turns a hang into an error: stretching it never changes what succeeds.
"""
from __future__ import annotations

import math
import os

SCALE_ENV = "TPCTL_TIMEOUT_SCALE"


def scale() -> float:
    """TPCTL_TIMEOUT_SCALE, read when a limit is set: a bad value is a ConfigError naming it (exit
    2 before anything changes), not a traceback when the module is imported."""
    text = os.environ.get(SCALE_ENV, "1")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1000:  # nan fails too
        from engine.errors import ConfigError

        raise ConfigError(f"{SCALE_ENV}={text[:40]!r}: not a number from 0 to 1000 (fix: 1 on a real machine, "
                          "8 in emulated guests, or unset it)")
    return value


def bound(seconds: float) -> float:
    """A time-out of `seconds` on a real machine, on this one."""
    return seconds * scale()
