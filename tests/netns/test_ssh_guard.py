"""The SSH lockout guard with a real sshd in the app namespace: install refuses (exit 2, nothing
changed) to redirect a port sshd listens on or the port of the SSH session it runs in, names the
port and --exclude-inbound-ports; --dry-run warns; --allow-ssh-redirect installs anyway."""
from __future__ import annotations

import pytest

from sandbox import sshd
from sandbox.netns import APP_V4, SRV_V4
from tests.netns.conftest import install, install_args
from tests.netns.host_view import host_view

PORT = 2222
BANNER = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
          "s.settimeout(5); print(s.recv(64).decode(errors='replace'))")


@pytest.fixture
def sshd_in_app(sandbox):
    if not sshd.available():
        pytest.fail(f"no unpacked sshd at {sshd.SSHD}: run `make setup` (scripts/setup.sh unpacks it)")
    return sshd.start(sandbox, sandbox.app, PORT)


def banner(sandbox) -> str:
    return sandbox.run(sandbox.srv, ["python3", "-c", BANNER, APP_V4, str(PORT)], timeout=30, check=True).stdout


@pytest.mark.parametrize("engine", ["iptables-nft", "nftables"])
def test_install_refuses_to_redirect_the_port_sshd_listens_on(scene, sandbox, sshd_in_app, engine):
    assert banner(sandbox).startswith("SSH-2.0-OpenSSH")
    before = host_view(sandbox)
    refused = sandbox.tpctl(*install_args(engine, sandbox))
    assert refused.returncode == 2, refused.stderr
    assert f"inbound TCP port {PORT}" in refused.stderr and f"--exclude-inbound-ports {PORT}" in refused.stderr
    assert f"sshd (pid {sshd_in_app.pid}) listens on it" in refused.stderr, refused.stderr
    assert host_view(sandbox) == before  # nothing changed, not even the state directory
    install(sandbox, engine, "--exclude-inbound-ports", str(PORT))
    assert banner(sandbox).startswith("SSH-2.0-OpenSSH") and scene.connections("inbound") == []


def test_dry_run_warns_and_allow_ssh_redirect_installs_anyway(scene, sandbox, sshd_in_app):
    dry = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--dry-run"))
    assert dry.returncode == 0 and f"# [WARNING] install would redirect inbound TCP port {PORT}" in dry.stderr
    forced = install(sandbox, "iptables-nft", "--allow-ssh-redirect")
    assert "installing anyway, as --allow-ssh-redirect asks" in forced.stderr
    banner(sandbox)  # the test sidecar forwards it; Envoy without a listener for 2222 would not
    assert [c["original_dst"] for c in scene.connections("inbound")] == [f"{APP_V4}:{PORT}"]


def test_the_session_port_counts_only_where_the_session_arrives(sandbox):
    """No sshd here: SSH_CONNECTION alone. A session to an address of this namespace is
    guarded; one to another host's address, over loopback, or with inbound off is not."""
    here = {"SSH_CONNECTION": f"{SRV_V4} 50000 {APP_V4} 22"}
    refused = sandbox.tpctl(*install_args("iptables-nft", sandbox), env=here)
    assert refused.returncode == 2 and "the SSH session this install runs in" in refused.stderr, refused.stderr
    for env, extra in (({"SSH_CONNECTION": "198.19.0.9 50000 198.19.0.10 22"}, ()),
                       ({"SSH_CONNECTION": "127.0.0.1 50000 127.0.0.1 22"}, ()),
                       (here, ("--redirect-inbound=false",)), (here, ("--exclude-inbound-ports", "22")),
                       (here, ("--exclude-inbound-ips", f"{SRV_V4}/32"))):
        result = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--dry-run", *extra), env=env)
        assert result.returncode == 0 and "WARNING] install would redirect" not in result.stderr, (env, extra)
