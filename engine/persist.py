"""Boot persistence, the same for every engine: `install --persist` writes the effective
configuration as a file in kumactl's YAML schema and a systemd unit that installs from it at
boot (the engine choice made afresh there: bpffs and /run/tpctl are empty after a reboot) and
uninstalls at stop. A plain `tpctl uninstall` removes both; the unit's own ExecStop keeps them.

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

    @classmethod
    def here(cls) -> Paths:
        root = os.environ.get(ROOT_ENV, "/")
        under = lambda path: os.path.join(root, path.lstrip("/"))  # noqa: E731 - three uses, one line
        return cls(under(CONFIG), under(UNIT), under(WANTS), root == "/")


# -- what is written (pure) --------------------------------------------------------------------
def _yaml_value(field: str, value):
    if field == "kuma_dp_user":
        return value.name or str(value.uid)
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


def unit_text(config: Config, config_path: str = CONFIG, python: str = sys.executable) -> str:
    tpctl = [python, "-m", "engine.cli"]
    start = shlex.join([*tpctl, "install", "--config", config_path, *command_flags(config)])
    stop = shlex.join([*tpctl, "uninstall", "--keep-persistence"])
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
    _write(paths.unit, unit_text(config, CONFIG if paths.systemd else paths.config))
    if not os.path.islink(paths.wants):
        os.makedirs(os.path.dirname(paths.wants), exist_ok=True)
        os.symlink(f"../{UNIT_NAME}", paths.wants)
    _daemon_reload(paths)
    return before


def written(config: Config, paths: Paths) -> bool:
    """Whether the files on disk are exactly what `write` would write now (enabled)."""
    now = snapshot(paths)
    return (now["config"] == config_text(config) and now["wants"] is not None
            and now["unit"] == unit_text(config, CONFIG if paths.systemd else paths.config))


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


def remove(paths: Paths, dry_run: bool) -> list[str]:
    """Disable and remove what `install --persist` wrote (only files carrying our mark)."""
    found = ours(paths)
    if not dry_run and found:
        for path in reversed(found):
            os.unlink(path)
        _daemon_reload(paths)
    return [f"persistence: {path}" for path in found]


def status(paths: Paths) -> dict:
    found = ours(paths)
    enabled = paths.unit in found and paths.wants in found
    return {"persistent": enabled and paths.config in found, "unit": paths.unit if paths.unit in found else None,
            "enabled": enabled, "config": paths.config if paths.config in found else None}


def status_line(report: dict) -> str:
    if report["persistent"]:
        return (f"persistent: yes ({UNIT_NAME} enabled: at boot it installs from {report['config']}, "
                "choosing the engine afresh)")
    if report["unit"] or report["config"]:
        return f"persistent: partly ({', '.join(p for p in (report['unit'], report['config']) if p)}; not enabled)"
    return "persistent: no (tpctl install --persist makes it survive reboots)"
