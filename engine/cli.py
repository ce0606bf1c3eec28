"""tpctl command line: install, uninstall, status, demo. Commands stay thin: they parse and call."""
from __future__ import annotations

import json
import os
import signal
import sys

import click
from click.core import ParameterSource

from engine import config as config_module
from engine import lifecycle, persist, registry, state, timeouts, values
from engine.errors import ConfigError, DriftFound, HungUp, Interrupted, Terminated, TpctlError
from engine.options import INSTALL_OPTIONS, OptionSpec


class Parsed(click.ParamType):
    """A click type around one of engine.values' parsers: bad input exits 2 naming the flag."""

    def __init__(self, spec: OptionSpec):
        self.spec = spec
        self.name = spec.flag

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.spec.parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def checked_path(flag: str, path: str | None, absolute: bool = False) -> str | None:
    """A path flag typed at the edge (engine/values.py's grammar); "-" is stdin for --config."""
    if path is None or path == "-":
        return path
    try:
        return values.absolute_path(path) if absolute else values.path(path)
    except ValueError as err:
        raise ConfigError(f"{flag}: {err}") from None


def _absolute_path(_ctx, param, path: str | None) -> str | None:
    return checked_path(f"--{param.name.replace('_', '-')}", path, absolute=True)


def _say(message: str) -> None:
    click.echo(message, err=True)


def _show(message: str) -> None:
    click.echo(message)


def install_options(func):
    for spec in reversed(INSTALL_OPTIONS):
        shown_default = not (spec.switch or spec.multiple or spec.default is None)
        kwargs = dict(type=Parsed(spec), default=None, envvar=spec.envvar, hidden=spec.hidden,
                      metavar="[true|false]" if spec.switch else "VALUE",
                      help=spec.help + (f" [default: {spec.default}]" if shown_default else ""))
        if spec.switch:
            kwargs.update(is_flag=False, flag_value="true")
        if spec.multiple:
            kwargs.update(multiple=True, default=())
        func = click.option(f"--{spec.flag}", spec.field, **kwargs)(func)
    return func


state_dir_option = click.option(
    "--state-dir", default=None, envvar=state.STATE_ENV,
    callback=_absolute_path,
    help=f"where the state file lives [default: {state.DEFAULT_DIR}]")


def explicit_values(ctx: click.Context, params: dict) -> dict:
    """The values that came from flags or TPCTL_* variables (they beat config files)."""
    explicit = {}
    for spec in INSTALL_OPTIONS:
        if ctx.get_parameter_source(spec.field) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = params[spec.field]
        if spec.multiple:
            value = tuple(dict.fromkeys(item for part in value for item in part))
        explicit[spec.field] = value
    return explicit


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main():
    """tpctl: make an application's traffic pass through its sidecar proxy, with eBPF or iptables."""
    timeouts.scale()  # a bad TPCTL_TIMEOUT_SCALE is bad input before any command starts, not mid-step


@main.command()
@install_options
@click.option("--config", "config_files", multiple=True, envvar="TPCTL_CONFIG",
              help="YAML config file in kumactl's schema (repeatable, comma list allowed, '-' for stdin; "
                   "a regular file of at most 4 MiB, without YAML aliases)")
@state_dir_option
@click.pass_context
def install(ctx, config_files, state_dir, **params):
    """Redirect traffic through the sidecar (mirrors `kumactl install transparent-proxy`)."""
    from engine import apply, transaction

    files = [checked_path("--config", p.strip()) for item in config_files for p in item.split(",") if p.strip()]
    config = config_module.build(explicit_values(ctx, params), files)  # bad input first: exit 2 naming it
    _need_root("install")
    try:
        apply.install(config, state.state_dir(state_dir), _say, _show)
    except (KeyboardInterrupt, transaction.Terminated) as err:  # the transaction rolled back before this
        signum = getattr(err, "signum", signal.SIGINT)
        error = {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}.get(signum, Interrupted)
        raise error(f"interrupted by {signal.Signals(signum).name}: what this install had "
                    "done was rolled back; the host is as before") from None


@main.command()
@click.option("--dry-run", is_flag=True, help="print what would be removed and change nothing")
@click.option("--verbose", is_flag=True, help="print every object removed")
@click.option("--ebpf-bpffs-path", default=None, callback=_absolute_path,
              help="bpffs mount that holds <path>/tpctl pins [default: the one recorded at install]")
@click.option("--keep-persistence", is_flag=True,
              help="keep what install --persist wrote (tpctl.service's own stop: the next boot installs again)")
@state_dir_option
def uninstall(dry_run, verbose, ebpf_bpffs_path, keep_persistence, state_dir):
    """Remove exactly what install made, and nothing else."""
    _need_root("uninstall")
    removed = lifecycle.uninstall(state.state_dir(state_dir), {"ebpf_bpffs_path": ebpf_bpffs_path,
                                                               "keep_persistence": keep_persistence}, dry_run, _say)
    if dry_run or verbose:
        for line in removed:
            _show(("would remove: " if dry_run else "removed: ") + line)
    _say(f"tpctl: {'would remove' if dry_run else 'removed'} {len(removed)} objects" if removed
         else "tpctl: nothing of tpctl is installed")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the full record as JSON")
@click.option("--dataplane", is_flag=True,
              help="print the Dataplane networking.transparentProxying block (YAML) that matches the install")
@click.option("--ebpf-bpffs-path", default=None, hidden=True, callback=_absolute_path)
@state_dir_option
def status(as_json, dataplane, ebpf_bpffs_path, state_dir):
    """Say what is installed and whether it drifted (exit code 5 when it did)."""
    from engine.probe import probe

    _need_root("status")
    report, lines = lifecycle.status(state.state_dir(state_dir), {"ebpf_bpffs_path": ebpf_bpffs_path})
    if dataplane:
        from engine import dataplane as dataplane_block

        if not report["installed"]:
            raise TpctlError(f"not installed (no state in {report['state_dir']}): there is no transparentProxying "
                             "block to print; install first")
        _show(dataplane_block.text(report).rstrip())
    elif as_json:
        report["host"] = probe().to_json()
        _show(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        _show(status_text(report, lines))
    if report["drift"]:
        raise DriftFound("drift found:\n  " + "\n  ".join(report["drift"]))


def status_text(report: dict, engine_lines: list[str]) -> str:
    """What `systemctl status` would say: a headline, then lines a person reads."""
    persistent = persist.status_line(report["persistent"])
    if not report["installed"]:
        head = "tpctl: not installed"
        if report["drift"]:
            head += f" (no usable state file in {report['state_dir']}), but tpctl objects are on this host:"
        said = [f"  {persistent}"] if report["persistent"]["unit"] or report["persistent"]["config"] else []
        return "\n".join([head, *(f"  {d.removeprefix(lifecycle.LEFTOVER)}" for d in report["drift"]), *said])
    lines = [f"tpctl: installed, engine {report['engine']} (since {report['installed_at']})"]
    choice = report.get("choice") or {}
    for number, reason in enumerate(choice.get("reasons", [])):
        lines.append(("  why:  " if number == 0 else "        ") + reason)
    families = ", ".join(f"IPv{f}" for f in choice.get("families", []))
    if families:
        lines.append(f"  families: {families}" + ("; ::6/128 on lo added by tpctl" if report.get("ipv6_passthrough_added")
                                                 else ""))
    lines += [f"  {line}" for line in engine_lines]
    lines.append(f"  {persistent}")
    if report["drift"]:
        lines.append(f"  drift: {len(report['drift'])} differences from the record (below; exit code 5)")
    else:
        lines.append("  drift: none (the kernel holds what install recorded)")
    return "\n".join(lines)


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise ConfigError(f"tpctl {command} needs root: it reads and changes netfilter tables, cgroup and tc "
                          f"programs, bpffs pins and {state.DEFAULT_DIR} (fix: sudo tpctl {command} ...)")


@main.command()
@click.option("--engine", type=click.Choice(["auto", *registry.names()]), default="auto",
              help="auto: eBPF where every check passes, else iptables; or one engine, no fallback")
def demo(engine):
    """Run the redirect end to end in a throwaway sandbox and clean up after."""
    try:
        from sandbox import demo as demo_module
    except ModuleNotFoundError as err:  # an installed wheel: the sandbox stays in the checkout
        if err.name != "sandbox":
            raise
        raise ConfigError("the demo runs from a checkout: make demo") from None

    sys.exit(demo_module.run(engine, _show))


if __name__ == "__main__":
    main()
