"""Boot persistence, the same for every engine: `install --persist` writes the effective
configuration as a file in kumactl's YAML schema and a systemd unit that installs from it at
boot (the engine choice made afresh there: bpffs and /run/tpctl are empty after a reboot) and
uninstalls at stop. The file holds what the install resolved (the proxy's uid, not a user name
that may not resolve at boot).

Persistence belongs to the install that made it: the unit's command line names that install's
state directory (--state-dir), and only an uninstall of that state directory removes the file
and the unit (the unit's own ExecStop keeps them; an install's crash recovery never touches
them). Root runs the unit at every boot, so --persist refuses code that anyone but root could
change, before anything is written (engine/boot_trust.py).

The file holds kumactl's keys only (the same schema `kumactl install transparent-proxy
--config` and `kuma-dp run --transparent-proxy-config` read); tpctl-only options go on the
unit's command line. TPCTL_PERSIST_ROOT (tests) puts every path under another root, where
systemd is not told.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

import yaml

from engine import state
from engine.config import Config, defaults
from engine.options import INSTALL_OPTIONS
from engine.timeouts import bound

ROOT_ENV = "TPCTL_PERSIST_ROOT"
CONFIG = "/etc/tpctl/config.yaml"
UNIT_NAME = "tpctl.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
MARK = "# written by tpctl install --persist; tpctl uninstall removes it"
NOT_PERSISTED = {"dry_run", "verbose", "persist"}  # about this run, not the install
TPCTL_ONLY_YAML = {"ebpf.skMsgAcceleration"}  # tpctl's own keys: on the command line, kumactl's file stays clean


@dataclass(frozen=True)
class Paths:
    config: str
    unit: str
    wants: str
    systemd: bool  # the real root: tell systemd (daemon-reload) when it runs
    state_dir: str = state.DEFAULT_DIR  # the install this persistence belongs to (absolute, resolved)

    @classmethod
    def here(cls, state_dir: str | None = None) -> Paths:
        """`state_dir`: the install's (--state-dir; else TPCTL_STATE_DIR or the default)."""
        root = os.environ.get(ROOT_ENV, "/")
        under = lambda path: os.path.join(root, path.lstrip("/"))  # noqa: E731 - three uses, one line
        return cls(under(CONFIG), under(UNIT), under(WANTS), root == "/",
                   os.path.realpath(state.state_dir(state_dir)))


# -- what is written (pure) --------------------------------------------------------------------
def _yaml_value(field: str, value):
    if field == "kuma_dp_user":  # the uid: a name (kumactl's default kuma-dp) may not resolve at boot
        return str(value.uid)
    if field == "exclude_outbound_ports_for_uids":
        return [entry.text for entry in value]
    if field == "vnet":
        return [f"{vn.interface}:{vn.cidr}" for vn in value]
    if field == "iptables_executables":  # kumactl's flat mapping
        return dict(item.split(":", 1) for item in value.split(",") if ":" in item)
    if field == "sleep_between_retries":
        return f"{value:g}s"
    if isinstance(value, tuple):
        return [v if isinstance(v, int) else str(v) for v in value]
    return value


def config_document(config: Config) -> dict:
    """kumactl's YAML schema, nested: the proxy user always (resolved at install), every other
    kumactl key whose value is not its default."""
    default = defaults()
    document: dict = {}
    for spec in INSTALL_OPTIONS:
        if not spec.yaml or spec.yaml in TPCTL_ONLY_YAML or spec.field in NOT_PERSISTED:
            continue
        value = getattr(config, spec.field)
        if spec.field != "kuma_dp_user" and (value == default[spec.field] or value is None):
            continue
        node = document
        *parents, leaf = spec.yaml.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _yaml_value(spec.field, value)
    return document


def command_flags(config: Config) -> list[str]:
    """The tpctl-only options of this install, as flags for the unit's install command."""
    default = defaults()
    flags = []
    for spec in INSTALL_OPTIONS:
        if spec.field in NOT_PERSISTED or (spec.yaml and spec.yaml not in TPCTL_ONLY_YAML):
            continue
        value = getattr(config, spec.field)
        if value == default[spec.field]:
            continue
        flags.append(f"--{spec.flag}" if spec.switch and value is True else f"--{spec.flag}={_yaml_value(spec.field, value)}")
    return flags


def command_line(config: Config, config_path: str = CONFIG) -> str:
    return shlex.join(["tpctl", "install", "--config", config_path, *command_flags(config)])


def config_text(config: Config) -> str:
    return f"{MARK}\n" + yaml.safe_dump(config_document(config), sort_keys=False, default_flow_style=False)


def unit_text(config: Config, config_path: str = CONFIG, python: str = sys.executable,
              state_dir: str = state.DEFAULT_DIR) -> str:
    tpctl = [python, "-m", "engine.cli"]
    start = shlex.join([*tpctl, "install", "--state-dir", state_dir, "--config", config_path, *command_flags(config)])
    stop = shlex.join([*tpctl, "uninstall", "--state-dir", state_dir, "--keep-persistence"])
    return "\n".join([
        MARK,
        "[Unit]",
        "Description=tpctl transparent proxy: this host's traffic through its sidecar",
        "Documentation=https://kuma.io/docs/",  # one URL: systemd refuses anything after it
        # the tc interface and the instance address exist once the network is online; kuma-dp
        # (configured by the same file) starts after the redirect is in place
        "Wants=network-online.target",
        "After=network-online.target local-fs.target",
        "Before=kuma-dp.service",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        # a oneshot has no start limit by default: an install that hangs must not hold up the boot
        "TimeoutStartSec=300",
        f"ExecStart={start}",
        f"ExecStop={stop}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


# -- the files (the only writes) ---------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    # readable by kuma-dp, which reads the same file and need not run as root
    state.write_atomically(path, text, mode=0o644, directory_mode=0o755)


def _daemon_reload(paths: Paths) -> None:
    if paths.systemd and os.path.isdir("/run/systemd/system"):  # systemd is PID 1 here
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=bound(60))


def snapshot(paths: Paths) -> dict:
    """What is there now, to put back: file contents (None: absent) and the symlink's target."""
    link = os.readlink(paths.wants) if os.path.islink(paths.wants) else None
    return {"config": _read(paths.config), "unit": _read(paths.unit), "wants": link}


def write(config: Config, paths: Paths) -> dict:
    """Write the file and the unit, enable it (the symlink `systemctl enable` makes); returns
    what was there before."""
    before = snapshot(paths)
    _write(paths.config, config_text(config))
    _write(paths.unit, _unit_for(config, paths))
    if not os.path.islink(paths.wants):
        os.makedirs(os.path.dirname(paths.wants), exist_ok=True)
        os.symlink(f"../{UNIT_NAME}", paths.wants)
    _daemon_reload(paths)
    return before


def written(config: Config, paths: Paths) -> bool:
    """Whether the files on disk are exactly what `write` would write now (enabled)."""
    now = snapshot(paths)
    return (now["config"] == config_text(config) and now["wants"] is not None
            and now["unit"] == _unit_for(config, paths))


def _unit_for(config: Config, paths: Paths) -> str:
    return unit_text(config, CONFIG if paths.systemd else paths.config, state_dir=paths.state_dir)


def restore(paths: Paths, before: dict) -> None:
    for key in ("config", "unit"):
        path = getattr(paths, key)
        if before[key] is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            _write(path, before[key])
    if before["wants"] is None and os.path.islink(paths.wants):
        os.unlink(paths.wants)
    _daemon_reload(paths)


def ours(paths: Paths) -> list[str]:
    """The persistence files tpctl wrote (marked), as they are now."""
    found = [p for p in (paths.config, paths.unit) if (_read(p) or "").startswith(MARK)]
    if os.path.islink(paths.wants) and paths.unit in found:
        found.append(paths.wants)
    return found


def owner(paths: Paths) -> str | None:
    """The state directory of the install the persisted unit belongs to (its --state-dir; a
    unit without one installed into the default at boot), None when there is no unit of ours."""
    text = _read(paths.unit) or ""
    if not text.startswith(MARK):
        return None
    start = next((line[len("ExecStart="):] for line in text.splitlines() if line.startswith("ExecStart=")), "")
    try:
        words = shlex.split(start)
    except ValueError:  # not what tpctl writes: nobody's
        return None
    found = words[words.index("--state-dir") + 1] if "--state-dir" in words[:-1] else state.DEFAULT_DIR
    return os.path.realpath(found)


def remove(paths: Paths, dry_run: bool) -> list[str]:
    """Disable and remove what `install --persist` wrote (only files carrying our mark), when its
    unit belongs to the install of paths.state_dir: another install's persistence stays. A marked
    file without a unit of ours (a partial leftover) installs nothing at boot: any uninstall may
    remove it."""
    if owner(paths) not in (None, paths.state_dir):
        return []
    found = ours(paths)
    if not dry_run and found:
        for path in reversed(found):
            os.unlink(path)
        _daemon_reload(paths)
    return [f"persistence: {path}" for path in found]


def status(paths: Paths, installed: bool | None = None) -> dict:
    """`installed`: whether paths.state_dir holds an install now (None: not asked)."""
    found = ours(paths)
    enabled = paths.unit in found and paths.wants in found
    report = {"persistent": enabled and paths.config in found, "unit": paths.unit if paths.unit in found else None,
              "enabled": enabled, "config": paths.config if paths.config in found else None,
              "owner": owner(paths), "state_dir": paths.state_dir}
    report["boot"] = boot_problem(paths, report, installed)
    return report


def boot_problem(paths: Paths, report: dict, installed: bool | None) -> str | None:
    """Why the persisted install is not in place, when it is this state dir's and is not: the
    boot install failed (systemd says so when it runs), or the unit was stopped."""
    if not report["persistent"] or installed is not False or report["owner"] != paths.state_dir:
        return None
    shown = unit_state(paths)
    if shown.get("ActiveState") == "failed":
        return f"boot install failed: see journalctl -u {UNIT_NAME} (systemd: Result={shown.get('Result', '?')})"
    return (f"not installed now: the boot install failed or {UNIT_NAME} was stopped (see journalctl -u {UNIT_NAME}; "
            f"systemctl start {UNIT_NAME} installs again)")


def unit_state(paths: Paths) -> dict:
    """systemd's Result and ActiveState of the unit, when systemd runs this root ({} otherwise)."""
    if not (paths.systemd and os.path.isdir("/run/systemd/system")):
        return {}
    try:
        shown = subprocess.run(["systemctl", "show", "-p", "Result,ActiveState", UNIT_NAME],
                               capture_output=True, text=True, timeout=bound(20)).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_show(shown)


def parse_show(text: str) -> dict:
    """`systemctl show -p A,B` output (A=x lines) as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def status_line(report: dict) -> str:
    if report["persistent"]:
        line = (f"persistent: yes ({UNIT_NAME} enabled: at boot it installs from {report['config']}, "
                "choosing the engine afresh)")
        if report.get("owner") not in (None, report.get("state_dir")):
            line += f"; it belongs to the install in {report['owner']} (uninstall there removes it)"
        return line + (f"; {report['boot']}" if report.get("boot") else "")
    if report["unit"] or report["config"]:
        return f"persistent: partly ({', '.join(p for p in (report['unit'], report['config']) if p)}; not enabled)"
    return "persistent: no (tpctl install --persist makes it survive reboots)"
