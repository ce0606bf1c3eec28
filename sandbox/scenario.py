"""The standard mesh scene in a sandbox: a server host, an app host with its sidecar.

  srv namespace (198.18.0.2, 2001:2::2): greeters on 9000 and 9001, a DNS server on 53
  app namespace (198.18.0.1, 2001:2::1): greeters on 8080 and 8081 (the app's own service),
                                          the sidecar as uid 5678 on 15001/15006/15053
Used by `tpctl demo`, the netns tests and the eBPF tests (these on ports of their own), so all
exercise exactly the same traffic.
"""
from __future__ import annotations

import json
import os
import time

from sandbox.netns import APP_V4, PROXY_UID, SRV_V4, Sandbox, check_runs_as

SERVER_PORTS = (9000, 9001)
APP_PORTS = (8080, 8081)
REAL_DNS_ANSWER = "198.18.0.99"
PEERS = "sandbox.peers"


class Scenario:
    def __init__(self, sandbox: Sandbox, proxy_uid: int = PROXY_UID, sidecar_args: tuple[str, ...] = (),
                 server_ports: tuple[int, ...] = SERVER_PORTS, app_ports: tuple[int, ...] = APP_PORTS):
        self.sb = sandbox
        self.proxy_uid = proxy_uid
        self.sidecar_args = sidecar_args
        self.server_ports, self.app_ports = server_ports, app_ports
        self.sidecar_log = os.path.join(sandbox.tmp, "sidecar.log")

    def start(self) -> Scenario:
        sb = self.sb
        check_runs_as(self.proxy_uid)
        for port in self.server_ports:
            sb.spawn(sb.srv, sb.python(PEERS, "greeter", "--port", str(port)))
        sb.spawn(sb.srv, sb.python(PEERS, "dns-server", "--port", "53", "--answer", REAL_DNS_ANSWER))
        for port in self.app_ports:
            sb.spawn(sb.app, sb.python(PEERS, "greeter", "--port", str(port)))
        sb.spawn(sb.app, sb.python("sandbox.sidecar", *self.sidecar_args), uid=self.proxy_uid, log=self.sidecar_log)
        for ns, port in [(sb.srv, p) for p in self.server_ports] + [(sb.app, p) for p in self.app_ports] + \
                        [(sb.app, 15001), (sb.app, 15006)]:
            sb.wait_for_port(ns, port)
        sb.wait_for_port(sb.srv, 53, "udp")
        sb.wait_for_port(sb.app, 15053, "udp")
        return self

    # -- traffic -----------------------------------------------------------------------------
    def _client(self, ns: str, *args: str, uid: int | None = None) -> dict:
        result = self.sb.run(ns, self.sb.python(PEERS, *args), uid=uid, timeout=30)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"error": f"client printed nothing usable: {result.stdout!r} {result.stderr!r}"}

    def outbound(self, host: str = SRV_V4, port: int = SERVER_PORTS[0], uid: int | None = None,
                 sockopts: bool = False) -> dict:
        """The app (or `uid`) connects out to host:port; with `sockopts`, the client also reads
        other socket options through the redirect (peers.sockopts)."""
        return self._client(self.sb.app, "tcp", host, str(port), *(["--sockopts"] if sockopts else []), uid=uid)

    def hit(self, host: str = SRV_V4, port: int = SERVER_PORTS[0]) -> dict:
        """The app sends one line to host:port and closes at once."""
        return self._client(self.sb.app, "hit", host, str(port))

    def inbound(self, host: str = APP_V4, port: int = APP_PORTS[0]) -> dict:
        """A client on the server host connects in to the app."""
        return self._client(self.sb.srv, "tcp", host, str(port))

    def dns(self, server: str = SRV_V4, name: str = "demo.mesh", uid: int | None = None,
            connect: bool = False) -> dict:
        """The app (or `uid`) asks `server` for `name`, from a connected socket with `connect`."""
        return self._client(self.sb.app, "dns", server, name, *(["--connect"] if connect else []), uid=uid)

    # -- what the sidecar saw ----------------------------------------------------------------
    def seen(self, settle: float = 0.3) -> list[dict]:
        time.sleep(settle)  # the sidecar logs from its own threads
        try:
            with open(self.sidecar_log, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip().startswith("{")]
        except FileNotFoundError:
            return []

    def connections(self, listener: str) -> list[dict]:
        return [r for r in self.seen() if r.get("listener") == listener]

    def clear(self) -> None:
        open(self.sidecar_log, "w").close()
