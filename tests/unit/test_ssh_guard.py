"""The SSH lockout guard's decision (pure): which SSH ports an install would redirect, and why."""
from __future__ import annotations

from engine import ssh_guard, values
from engine.ssh_guard import Exposure, Session, exposed, message, session_from
from tests.unit.test_nftables_ruleset import config

HERE = ("198.18.0.1", "2001:2::1", "127.0.0.1")


def test_ssh_connection_is_parsed_and_nonsense_is_no_session():
    assert session_from({"SSH_CONNECTION": "198.18.0.2 50000 198.18.0.1 22"}) == Session("198.18.0.2", "198.18.0.1", 22)
    assert session_from({"SSH_CONNECTION": "fe80::1%eth0 1 fe80::2%eth0 2222"}).port == 2222
    for text in ("", "a b c", "198.18.0.2 50000 198.18.0.1 ssh", "x 1 y 22"):
        assert session_from({"SSH_CONNECTION": text}) is None, text
    assert session_from({}) is None


def test_the_session_port_is_guarded_where_the_session_arrives_and_is_redirected():
    session = Session("198.18.0.2", "198.18.0.1", 22)
    [found] = exposed(config(), session, HERE, {})
    assert found.port == 22 and "SSH_CONNECTION" in found.why
    assert exposed(config(), Session("198.18.0.2", "198.19.0.1", 22), HERE, {}) == []  # not an address here
    assert exposed(config(), Session("127.0.0.1", "127.0.0.1", 22), HERE, {}) == []  # loopback: never inbound
    assert exposed(config(exclude_inbound_ports=(22,)), session, HERE, {}) == []
    assert exposed(config(exclude_inbound_ips=values.network_list("198.18.0.0/30")), session, HERE, {}) == []
    assert exposed(config(redirect_inbound=False), session, HERE, {22: "sshd"}) == []


def test_listeners_are_guarded_unless_excluded_and_each_port_is_named_once():
    listeners = {22: "a listener on port 22, SSH's port", 2222: "sshd (pid 7) listens on it"}
    found = exposed(config(exclude_inbound_ports=(22,)), Session("198.18.0.2", "198.18.0.1", 2222), HERE, listeners)
    assert found == [Exposure(2222, found[0].why)] and "SSH_CONNECTION" in found[0].why
    text = message(exposed(config(), None, HERE, listeners))
    assert "inbound TCP port 22,2222" in text and "--exclude-inbound-ports 22,2222" in text
    assert "--allow-ssh-redirect" in text


def test_check_refuses_warns_under_dry_run_and_installs_when_allowed(monkeypatch):
    monkeypatch.setattr(ssh_guard, "sshd_listeners", lambda: {2222: "sshd (pid 7) listens on it"})
    said: list[str] = []
    try:
        ssh_guard.check(config(), said.append, environ={})
    except Exception as err:  # ConfigError: exit 2
        assert getattr(err, "exit_code", None) == 2 and "port 2222" in str(err)
    else:
        raise AssertionError("install was not refused")
    ssh_guard.check(config(dry_run=True), said.append, environ={})
    ssh_guard.check(config(allow_ssh_redirect=True), said.append, environ={})
    assert said[0].startswith("# [WARNING] install would redirect") and "installing anyway" in said[1]
