"""The SSH lockout guard: an install that would send SSH to the sidecar's inbound port is refused.

With inbound redirection on, every local TCP port not excluded goes to the sidecar, and a
sidecar that does not know the port drops the connection: the operator's next SSH login fails
(kuma-website#1375, #1527; kumactl's help says port 22 is excluded by default, its defaults
exclude nothing). Install therefore refuses (exit 2) when it would redirect
  - the port of the SSH session it runs in (SSH_CONNECTION, when its server address is a
    non-loopback address of this network namespace: a session elsewhere does not come through
    here, one over loopback is never redirected inbound), or
  - a port sshd listens on in this network namespace (a socket-activated sshd listens through
    systemd, so any listener on 22 counts too),
naming the port and --exclude-inbound-ports; --allow-ssh-redirect installs anyway, and
--dry-run only warns. Probing only reads /proc and netlink; deciding is pure.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine import netlink
from engine.config import Config
from engine.errors import ConfigError

SSH_PORT = 22
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


@dataclass(frozen=True)
class Session:
    client: str
    server: str
    port: int


@dataclass(frozen=True)
class Exposure:
    port: int
    why: str


def session_from(environ: Mapping[str, str]) -> Session | None:
    """SSH_CONNECTION is "client_ip client_port server_ip server_port"."""
    parts = environ.get("SSH_CONNECTION", "").split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    try:
        client, server = (str(ipaddress.ip_address(p.split("%")[0])) for p in (parts[0], parts[2]))
    except ValueError:
        return None
    return Session(client, server, int(parts[3]))


def exposed(config: Config, session: Session | None, local_addresses: Iterable[str],
            listeners: Mapping[int, str]) -> list[Exposure]:
    """The SSH ports this install would redirect, and why each is SSH (pure)."""
    if not config.redirect_inbound:
        return []
    excluded = set(config.exclude_inbound_ports)
    if config.include_inbound_ports:  # only the included ports are redirected
        excluded = set(range(1, 65536)) - set(config.include_inbound_ports)
    found: dict[int, str] = {}
    # a session to a loopback address never meets inbound redirection (that is PREROUTING's)
    if (session and session.port not in excluded and session.server in set(local_addresses)
            and not ipaddress.ip_address(session.server).is_loopback):
        client = ipaddress.ip_address(session.client)
        if not any(client in net for net in config.exclude_inbound_ips if net.version == client.version):
            found[session.port] = (f"the SSH session this install runs in (SSH_CONNECTION: {session.client} to "
                                   f"{session.server} port {session.port})")
    for port, why in sorted(listeners.items()):
        if port not in excluded:
            found.setdefault(port, why)
    return [Exposure(port, why) for port, why in sorted(found.items())]


def message(exposures: list[Exposure]) -> str:
    ports = ",".join(str(e.port) for e in exposures)
    whys = "; ".join(f"port {e.port}: {e.why}" for e in exposures)
    return (f"install would redirect inbound TCP port {ports} to the sidecar, which would lock SSH out ({whys}). "
            f"Fix: --exclude-inbound-ports {ports} (or --redirect-inbound=false); "
            "--allow-ssh-redirect installs anyway")


# -- probing (read-only) ----------------------------------------------------------------------
def listening_ports() -> dict[int, int]:
    """socket inode -> port of every listening TCP socket in this network namespace."""
    found: dict[int, int] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == LISTEN:
                        found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
        except OSError:
            continue
    return found


def sshd_listeners(proc: str = "/proc") -> dict[int, str]:
    """port -> why, for the ports sshd (or anything, on 22) listens on in this namespace."""
    inodes = listening_ports()
    found = {port: "a listener on port 22, SSH's port" for port in inodes.values() if port == SSH_PORT}
    for pid in filter(str.isdigit, _listdir(proc)):
        try:
            with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as handle:
                if handle.read().strip() != "sshd":
                    continue
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                found[inodes[int(target[8:-1])]] = f"sshd (pid {pid}) listens on it"
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def check(config: Config, say, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse (ConfigError, exit 2) or, under --dry-run or --allow-ssh-redirect, warn. Reads
    this namespace's addresses only for an SSH session, and nothing when inbound is off."""
    if not config.redirect_inbound:
        return
    session = session_from(environ)
    local = [address for _index, address in netlink.addresses()] if session else []
    found = exposed(config, session, local, sshd_listeners())
    if not found:
        return
    if config.allow_ssh_redirect:
        say(f"# [WARNING] {message(found)}: installing anyway, as --allow-ssh-redirect asks")
    elif config.dry_run:
        say(f"# [WARNING] {message(found)}")
    else:
        raise ConfigError(message(found))
