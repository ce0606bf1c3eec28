"""An unmodified proxy works with either engine: HAProxy (Debian's package) as the sidecar
(tests/netns/haproxy_sidecar.py)."""
from __future__ import annotations

from sandbox.netns import SRV_V4
from sandbox.scenario import PEERS
from tests.netns import haproxy_sidecar
from tests.netns.conftest import install


def test_haproxy_forwards_redirected_connections_to_their_original_destination(sandbox, engine):
    log = haproxy_sidecar.start(sandbox)
    sandbox.spawn(sandbox.srv, sandbox.python(PEERS, "greeter", "--port", "9000"))
    sandbox.wait_for_port(sandbox.srv, 9000)
    install(sandbox, engine, "--redirect-inbound=false", "--ip-family-mode", "ipv4")
    result = sandbox.run(sandbox.app, sandbox.python(PEERS, "tcp", SRV_V4, "9000"), timeout=30)
    assert f'"reply": "hello from {SRV_V4}:9000' in result.stdout, result.stdout + result.stderr
    assert haproxy_sidecar.forwarded(log) == 1, open(log).read()
