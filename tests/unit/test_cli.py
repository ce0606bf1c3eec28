"""The CLI edge: typed flags, environment variables, exit codes (no root, nothing applied)."""
from __future__ import annotations

from click.testing import CliRunner

from engine.cli import main


def run(*args, env=None, input=None):
    return CliRunner().invoke(main, list(args), env=env, input=input)


def test_bad_port_exits_2_naming_the_flag():
    result = run("install", "--redirect-inbound-port", "0", "--dry-run")
    assert result.exit_code == 2
    assert "--redirect-inbound-port" in result.output and "out of range" in result.output


def test_bad_environment_variable_exits_2_naming_it():
    result = run("install", "--dry-run", env={"TPCTL_REDIRECT_OUTBOUND_PORT": "http"})
    assert result.exit_code == 2
    assert "TPCTL_REDIRECT_OUTBOUND_PORT" in result.output or "--redirect-outbound-port" in result.output


def test_conflicting_dns_flags_exit_2():
    result = run("install", "--redirect-dns", "--redirect-all-dns-traffic", "--dry-run")
    assert result.exit_code == 2 and "conflict" in result.output


def test_switches_accept_kumactl_style_false():
    result = run("install", "--redirect-inbound=false", "--redirect-inbound-port", "x")
    assert result.exit_code == 2 and "--redirect-inbound-port" in result.output
    result = run("install", "--redirect-inbound=maybe")
    assert result.exit_code == 2 and "--redirect-inbound" in result.output


def test_every_kumactl_flag_is_accepted():
    flags = ["--kuma-dp-user", "--redirect-inbound", "--redirect-inbound-port", "--redirect-outbound-port",
             "--exclude-inbound-ports", "--exclude-outbound-ports", "--exclude-inbound-ips", "--exclude-outbound-ips",
             "--exclude-outbound-ports-for-uids", "--redirect-dns", "--redirect-all-dns-traffic",
             "--redirect-dns-port", "--skip-dns-conntrack-zone-split", "--ip-family-mode", "--vnet", "--dry-run",
             "--verbose", "--store-firewalld", "--wait", "--wait-interval", "--max-retries",
             "--sleep-between-retries", "--iptables-logs", "--disable-comments", "--drop-invalid-packets",
             "--redirect-inbound-insert-instead-of-append", "--redirect-outbound-insert-instead-of-append",
             "--iptables-executables", "--config", "--experimental-transparent-proxy-engine", "--ebpf-enabled",
             "--ebpf-instance-ip", "--ebpf-programs-source-path", "--ebpf-bpffs-path", "--ebpf-cgroup-path",
             "--ebpf-tc-attach-iface", "--no-fallback", "--iptables-backend"]
    help_text = run("install", "--help").output
    missing = [f for f in flags if f not in help_text]
    assert missing == []


def test_unknown_config_file_exits_2():
    result = run("install", "--config", "/nonexistent/tpctl.yaml", "--dry-run")
    assert result.exit_code == 2 and "/nonexistent/tpctl.yaml" in result.output


def test_sk_msg_accel_switch_needs_the_ebpf_engine():
    result = run("install", "--ebpf-sk-msg-accel", "--dry-run")
    assert result.exit_code == 2 and "--ebpf-sk-msg-accel needs --ebpf-enabled" in result.output
    result = run("install", "--ebpf-sk-msg-accel=sometimes", "--dry-run")
    assert result.exit_code == 2 and "--ebpf-sk-msg-accel" in result.output


def test_non_root_gets_one_line_naming_what_needs_root_exit_2_and_nothing_changed(monkeypatch, tmp_path):
    monkeypatch.setattr("engine.cli.os.geteuid", lambda: 1000)
    state_dir = tmp_path / "state"
    for command in (["install", "--kuma-dp-user", "5678"], ["uninstall"], ["status"]):
        result = run(*command, env={"TPCTL_STATE_DIR": str(state_dir)})
        assert result.exit_code == 2, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "needs root" in lines[0] and f"sudo tpctl {command[0]}" in lines[0], lines
        assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert not state_dir.exists()


def test_bad_input_is_named_before_the_root_check(monkeypatch):
    monkeypatch.setattr("engine.cli.os.geteuid", lambda: 1000)
    result = run("install", "--redirect-dns", "--redirect-all-dns-traffic")
    assert result.exit_code == 2 and "conflict" in result.output
