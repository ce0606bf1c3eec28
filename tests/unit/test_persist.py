"""Boot persistence's files (pure): the configuration in kumactl's schema reads back as the same
configuration, tpctl-only options go on the unit's command line, the unit is what systemd needs."""
from __future__ import annotations

import os
import sys

import pytest
import yaml

from engine import boot_trust, persist
from engine import config as config_module
from engine import values as v
from engine.errors import ConfigError
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
                 "ExecStart=/opt/tpctl/.venv/bin/python -m engine.cli install --state-dir /run/tpctl "
                 "--config /etc/tpctl/config.yaml --nftables-enabled",
                 "ExecStop=/opt/tpctl/.venv/bin/python -m engine.cli uninstall --state-dir /run/tpctl "
                 "--keep-persistence"):
        assert line in lines, line


def test_write_enable_restore_and_remove_touch_only_marked_files(tmp_path, monkeypatch):
    monkeypatch.setenv(persist.ROOT_ENV, str(tmp_path))
    monkeypatch.delenv("TPCTL_STATE_DIR", raising=False)
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


def test_the_file_holds_the_resolved_uid_not_a_name_that_may_not_resolve_at_boot():
    cfg = config(kuma_dp_user=v.ProxyUser(5678, "kuma-dp"))  # kumactl's default user, whether it exists or not
    assert yaml.safe_load(persist.config_text(cfg))["kumaDPUser"] == "5678"


def test_persistence_belongs_to_the_state_dir_its_unit_names(tmp_path, monkeypatch):
    monkeypatch.setenv(persist.ROOT_ENV, str(tmp_path / "root"))
    mine, other = persist.Paths.here(str(tmp_path / "mine")), persist.Paths.here(str(tmp_path / "other"))
    persist.write(config(), mine)
    assert persist.owner(mine) == persist.owner(other) == str(tmp_path / "mine")
    unit = open(mine.unit).read()
    assert f"--state-dir {tmp_path / 'mine'} --config" in unit and f"--state-dir {tmp_path / 'mine'} --keep" in unit
    assert persist.remove(other, dry_run=False) == [] and persist.status(other)["persistent"]
    assert "belongs to the install in" in persist.status_line(persist.status(other))
    assert len(persist.remove(mine, dry_run=False)) == 3 and persist.owner(mine) is None
    # a unit of an earlier tpctl names no state dir: it installed into the default at boot
    persist.write(config(), mine)
    with open(mine.unit, "w") as handle:
        handle.write(unit.replace(f" --state-dir {tmp_path / 'mine'}", ""))
    assert persist.owner(mine) == persist.state.DEFAULT_DIR


def test_status_says_when_the_persisted_install_is_not_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv(persist.ROOT_ENV, str(tmp_path / "root"))
    paths = persist.Paths.here(str(tmp_path / "state"))
    persist.write(config(), paths)
    assert persist.status(paths, installed=True)["boot"] is None
    line = persist.status_line(persist.status(paths, installed=False))
    assert line.startswith("persistent: yes") and "journalctl -u tpctl.service" in line, line
    assert persist.status(persist.Paths.here(str(tmp_path / "other")), installed=False)["boot"] is None
    assert persist.parse_show("Result=exit-code\nActiveState=failed\n") == {"Result": "exit-code",
                                                                         "ActiveState": "failed"}
    # where systemd runs, its word: the unit failed (systemctl show, parsed above)
    monkeypatch.setattr(persist, "unit_state", lambda _paths: {"ActiveState": "failed", "Result": "exit-code"})
    line = persist.status_line(persist.status(paths, installed=False))
    assert "boot install failed: see journalctl -u tpctl.service (systemd: Result=exit-code)" in line, line


def test_persist_refuses_boot_code_others_can_change(tmp_path):
    persisted = config(persist=True, ebpf_enabled=True)
    boot_trust.check(persisted, str(tmp_path / "state"))  # this checkout and interpreter are root's
    source = tmp_path / "src"
    source.mkdir()
    for cfg in (config(persist=True, ebpf_enabled=True, ebpf_programs_source_path=str(source)),
                config(persist=True, iptables_executables="iptables:/tmp/iptables")):
        with pytest.raises(ConfigError, match="--persist: .*(writable by its group or by others|not root)") as err:
            boot_trust.check(cfg, str(tmp_path / "state"))
        assert "fix: " in str(err.value)
    with pytest.raises(ConfigError, match="--state-dir .* letters, digits"):
        boot_trust.check(persisted, "/run/tp ctl%i")
    boot_trust.check(config(ebpf_enabled=True, ebpf_programs_source_path="/tmp"), "/tmp")  # no --persist


def test_persist_refuses_a_loaded_module_file_others_can_change(tmp_path, monkeypatch):
    import types

    planted = tmp_path / "planted.py"  # in a root-owned directory, itself writable by anyone
    planted.write_text("")
    os.chmod(planted, 0o666)
    module = types.ModuleType("planted")
    module.__file__ = str(planted)
    monkeypatch.setitem(sys.modules, "planted", module)
    with pytest.raises(ConfigError, match="the module planted "):
        boot_trust.check(config(persist=True), str(tmp_path / "state"))


def test_untrusted_names_the_first_path_that_is_not_roots_alone(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.h").write_text("")
    os.chmod(tree / "sub" / "a.h", 0o644)
    top = str(tree)
    assert boot_trust._tree_problem(top) is None or os.geteuid() != 0
    os.chmod(tree / "sub" / "a.h", 0o666)
    assert "a.h is writable" in boot_trust._tree_problem(top) or os.geteuid() != 0
    os.chmod(tree / "sub" / "a.h", 0o644)
    os.symlink("/tmp", tree / "sub" / "link")  # a link in the tree to a directory others may write
    assert "/tmp is writable" in boot_trust._tree_problem(top) or os.geteuid() != 0
    os.unlink(tree / "sub" / "link")
    if os.geteuid() == 0:  # a directory in the tree that another user owns (the issue's case)
        os.chown(tree / "sub", 5678, 5678)
        assert "sub belongs to uid 5678, not root" in boot_trust._tree_problem(top)
    assert "cannot check it (No such file" in boot_trust.untrusted("/nonexistent-tpctl/src", True)
