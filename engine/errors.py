"""Typed errors, one exit code each (docs/architecture.md §7).

They subclass click's ClickException so the CLI prints `Error: <message>` and exits with the
code below; library callers catch them by type.
"""
from __future__ import annotations

import click


class TpctlError(click.ClickException):
    exit_code = 1


class ConfigError(TpctlError):
    """Bad input: a flag, an environment variable or a config file. Nothing was changed."""

    exit_code = 2


class UnsupportedHost(TpctlError):
    """The host cannot run what was asked (e.g. eBPF with --no-fallback on an old kernel)."""

    exit_code = 3


class ApplyFailed(TpctlError):
    """A step of install failed; the steps already done were undone."""

    exit_code = 4


class DriftFound(TpctlError):
    """status found the installed objects differ from what was recorded."""

    exit_code = 5


class Interrupted(TpctlError):
    """SIGINT (exit 130) or SIGTERM (143) during install: what it had done was rolled back."""

    exit_code = 130


class Terminated(Interrupted):
    exit_code = 143


class HungUp(Interrupted):
    """SIGHUP (a closed terminal or ssh session) during install: rolled back, exit 129."""

    exit_code = 129
