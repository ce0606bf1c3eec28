"""HostFacts: a read-only look at the host (kernel, cgroup2, bpffs, iptables backends, IPv6).

Nothing here changes the host. Every fact is plain data so `tpctl status --json` can show the
record that the choice was made from.
"""
from __future__ import annotations

import ipaddress
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from engine.config import RESOLV_CONF_LIMIT, read_limited
from engine.timeouts import bound

XTABLES_DIRS = ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/xtables", "/usr/lib64/xtables",
                "/usr/lib/aarch64-linux-gnu/xtables")
NEEDED_MATCHES = ("comment", "owner", "conntrack", "multiport", "tcp", "udp")
NEEDED_TARGETS = ("REDIRECT", "CT", "LOG")


@dataclass(frozen=True)
class Backend:
    name: str  # "legacy" | "nft"
    available: bool
    rule_lines: int  # "-A" lines in iptables-save + ip6tables-save: does it already hold rules?


@dataclass(frozen=True)
class HostFacts:
    kernel_release: str
    cgroup2_mount: str | None
    bpffs_mounts: tuple[str, ...]
    backends: tuple[Backend, ...]
    iptables_default: str | None  # what plain `iptables --version` says: "nf_tables" | "legacy"
    extensions: dict = field(default_factory=dict)  # name -> userspace extension present
    ipv6_addresses: tuple[str, ...] = ()  # non-loopback IPv6 addresses in this network namespace
    dns_servers: tuple[str, ...] = ()
    dns_servers_error: str | None = None
    interfaces: tuple[dict, ...] = ()  # {"name", "up", "addresses"} per non-loopback interface
    # python-iptables' self-test (engine/iptables/legacy_selftest.py): None when not run (only
    # an install that chose the legacy backend pays for it), "" when it passed, else why not
    python_iptables_problem: str | None = None
    # the families whose nat table (in the chosen iptables backend) has Docker's DOCKER_OUTPUT
    # chain: None when not looked (only an iptables install with DNS redirection pays for it)
    docker_output: tuple[int, ...] | None = None

    @property
    def has_ipv6(self) -> bool:
        return bool(self.ipv6_addresses)

    def backend(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)

    def to_json(self) -> dict:
        return asdict(self)


def kernel_release() -> str:
    # platform.release() reads uname(2), so `setarch --uname-2.6` reports a 2.6 kernel here too.
    return platform.release()


def kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, in mount order: the one mountinfo reader."""
    found = []
    try:
        with open(mountinfo, encoding="utf-8") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields = left.split(" ")
                if len(fields) > 4 and right:
                    found.append((fields[4].replace("\\040", " "), right.split(" ")[0]))
    except OSError:
        pass
    return found


def mounts_of_type(fstype: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points of a filesystem type; hybrid hosts keep cgroup2 at e.g. /sys/fs/cgroup/unified."""
    return [point for point, kind in mounts(mountinfo) if kind == fstype]


def _count_rules(save_command: str) -> int | None:
    path = shutil.which(save_command)
    if not path:
        return None
    try:
        out = subprocess.run([path], capture_output=True, text=True, timeout=bound(20)).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("-A "))


def probe_backends() -> tuple[Backend, ...]:
    backends = []
    for name in ("legacy", "nft"):
        counts = [_count_rules(f"{tool}-{name}-save") for tool in ("iptables", "ip6tables")]
        available = counts[0] is not None
        backends.append(Backend(name, available, sum(c or 0 for c in counts)))
    return tuple(backends)


def iptables_default_mode() -> str | None:
    path = shutil.which("iptables")
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=bound(10)).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "nf_tables" if "nf_tables" in out else "legacy"


def extensions() -> dict[str, bool]:
    present = {}
    for name in (*NEEDED_MATCHES, *NEEDED_TARGETS):
        present[name] = any(os.path.exists(os.path.join(d, f"libxt_{name}.so")) or
                            os.path.exists(os.path.join(d, f"libipt_{name}.so")) for d in XTABLES_DIRS)
    return present


def ipv6_addresses(if_inet6: str = "/proc/net/if_inet6") -> tuple[str, ...]:
    """Non-loopback IPv6 addresses of this network namespace (as kumactl's hasLocalIPv6)."""
    found = []
    try:
        with open(if_inet6, encoding="ascii") as handle:
            for line in handle:
                hexaddr, *_rest, ifname = line.split()
                address = ipaddress.IPv6Address(int(hexaddr, 16))
                if not address.is_loopback and ifname != "lo":
                    found.append(str(address))
    except OSError:
        pass
    return tuple(found)


def resolv_conf_servers(path: str | None) -> tuple[tuple[str, ...], str | None]:
    """Every `nameserver X` line, in file order (as kumactl reads resolv.conf); None: not read.
    A missing file is a warning (no server to redirect); a FIFO, a device, a directory or a
    file over RESOLV_CONF_LIMIT is bad input (ConfigError naming --resolv-conf: exit 2)."""
    if path is None:
        return (), None
    if not os.path.exists(path):  # a dangling link too
        return (), f"cannot read {path}: No such file or directory"
    text = read_limited(path, f"--resolv-conf {path}", RESOLV_CONF_LIMIT,
                        "fix: name the resolver's file, e.g. --resolv-conf /etc/resolv.conf")
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(str(ipaddress.ip_address(fields[1].split("%")[0])))
            except ValueError:
                continue
    return tuple(servers), None


def interfaces() -> tuple[dict, ...]:
    """Non-loopback interfaces with their state and addresses (for tc auto-detection)."""
    from engine import netlink

    addresses: dict[int, list[str]] = {}
    for index, address in netlink.addresses():
        addresses.setdefault(index, []).append(address)
    return tuple({"name": link["name"], "index": link["index"], "up": link["up"],
                  "addresses": addresses.get(link["index"], [])}
                 for link in netlink.links() if link["name"] != "lo")


def probe(resolv_conf: str | None = None) -> HostFacts:
    """`resolv_conf`: the file whose name servers DNS redirection needs (Config.dns_servers_file),
    None when it needs none: then it is not read at all."""
    servers, servers_error = resolv_conf_servers(resolv_conf)
    return HostFacts(
        kernel_release=kernel_release(),
        cgroup2_mount=next(iter(mounts_of_type("cgroup2")), None),
        bpffs_mounts=tuple(mounts_of_type("bpf")),
        backends=probe_backends(),
        iptables_default=iptables_default_mode(),
        extensions=extensions(),
        ipv6_addresses=ipv6_addresses(),
        dns_servers=servers,
        dns_servers_error=servers_error,
        interfaces=interfaces(),
    )

