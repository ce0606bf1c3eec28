"""Boot persistence's files (pure): the configuration in kumactl's schema reads back as the same
configuration, tpctl-only options go on the unit's command line, the unit is what systemd needs."""
from __future__ import annotations

import os

import yaml

from engine import config as config_module
from engine import persist
from engine import values as v
from engine.options import INSTALL_OPTIONS
from tests.unit.test_nftables_ruleset import MANY, config


def reread(tmp_path, cfg) -> config_module.Config:
    path = tmp_path / "config.yaml"
    path.write_text(persist.config_text(cfg))
    flags = persist.command_flags(cfg)
    explicit = {}
    for flag in flags:  # as the unit's command line gives them
        name, _, value = flag[2:].partition("=")
        spec = next(s for s in INSTALL_OPTIONS if s.flag == name)
        explicit[spec.field] = spec.parse(value if value else True)
    return config_module.build(explicit, [str(path)])


def test_the_written_file_and_flags_read_back_as_the_same_configuration(tmp_path):
    many = {**MANY, "redirect_all_dns_traffic": False, "redirect_dns": True, "exclude_inbound_ports": (22, 4444),
            "redirect_inbound_port": 16006, "sleep_between_retries": 0.5, "ebpf_enabled": True,
            "ebpf_sk_msg_accel": True, "nftables_enabled": True, "no_fallback": True, "iptables_backend": "legacy",
            "allow_ssh_redirect": True, "ip_family_mode": "ipv4"}
    for cfg in (config(), config(**many)):
        back = reread(tmp_path, cfg)
        for field in cfg.__dataclass_fields__:
            if field not in persist.NOT_PERSISTED:
                assert getattr(back, field) == getattr(cfg, field), field


def test_the_file_holds_kumactl_keys_only_and_the_tpctl_ones_go_on_the_command_line():
    cfg = config(ebpf_enabled=True, ebpf_sk_msg_accel=True, nftables_enabled=True, exclude_outbound_ports=(7001,),
                 exclude_outbound_ports_for_uids=v.ports_for_uids_list("tcp:53,3000-5000:106-108"), dry_run=True)
    document = yaml.safe_load(persist.config_text(cfg))
    assert document == {"kumaDPUser": "5678", "redirect": {"outbound": {
        "excludePorts": [7001], "excludePortsForUIDs": ["tcp:53,3000-5000:106-108"]}}, "ebpf": {"enabled": True}}
    assert persist.command_flags(cfg) == ["--ebpf-sk-msg-accel", "--nftables-enabled"]


def test_the_unit_installs_at_boot_after_the_network_and_before_kuma_dp():
    cfg = config(nftables_enabled=True)
    text = persist.unit_text(cfg, python="/opt/tpctl/.venv/bin/python")
    lines = text.splitlines()
    assert lines[0] == persist.MARK
    for line in ("Type=oneshot", "RemainAfterExit=yes", "TimeoutStartSec=300", "Documentation=https://kuma.io/docs/", "Wants=network-online.target",
                 "After=network-online.target local-fs.target", "Before=kuma-dp.service",
                 "WantedBy=multi-user.target",
                 "ExecStart=/opt/tpctl/.venv/bin/python -m engine.cli install --config /etc/tpctl/config.yaml "
                 "--nftables-enabled",
                 "ExecStop=/opt/tpctl/.venv/bin/python -m engine.cli uninstall --keep-persistence"):
        assert line in lines, line


def test_write_enable_restore_and_remove_touch_only_marked_files(tmp_path, monkeypatch):
    monkeypatch.setenv(persist.ROOT_ENV, str(tmp_path))
    paths = persist.Paths.here()
    assert paths.config == str(tmp_path / "etc/tpctl/config.yaml") and not paths.systemd
    before = persist.write(config(), paths)
    assert before == {"config": None, "unit": None, "wants": None}
    assert os.readlink(paths.wants) == "../tpctl.service" and persist.written(config(), paths)
    assert os.stat(paths.config).st_mode & 0o777 == 0o644  # kuma-dp reads it, and need not be root
    assert persist.status(paths)["persistent"] and not persist.written(config(exclude_outbound_ports=(1,)), paths)
    persist.restore(paths, before)
    assert not any(os.path.lexists(p) for p in (paths.config, paths.unit, paths.wants))
    os.makedirs(os.path.dirname(paths.unit), exist_ok=True)
    with open(paths.unit, "w") as handle:  # someone else's unit of that name
        handle.write("[Unit]\n")
    assert persist.remove(paths, dry_run=False) == [] and os.path.exists(paths.unit)
    os.unlink(paths.unit)
    persist.write(config(), paths)
    assert len(persist.remove(paths, dry_run=True)) == 3 and persist.status(paths)["persistent"]
    assert len(persist.remove(paths, dry_run=False)) == 3 and not persist.status(paths)["unit"]
