"""Parsers for flag values, shared by click parameters, environment variables and config files.

Each parser takes the raw text (or a YAML scalar/list) and returns a typed value, or raises
ValueError with a message that says what is wrong and what is expected. The caller adds the
flag name, so one message serves every source.
"""
from __future__ import annotations

import ipaddress
import pwd
import re
from dataclasses import dataclass

DEFAULT_PROXY_USER = "kuma-dp"
DEFAULT_PROXY_UID = 5678
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\+?$")


def port(text) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is out of range (ports are 1-65535)")
    return value


def _items(value) -> list[str]:
    """Accept "a,b", ["a", "b,c"] or a single scalar; return the non-empty items."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        raw = [str(v) for v in value]
    else:
        raw = [str(value)]
    return [item.strip() for chunk in raw for item in chunk.split(",") if item.strip()]


def port_list(value) -> tuple[int, ...]:
    return tuple(dict.fromkeys(port(item) for item in _items(value)))


_DOTTED = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?")


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR; host bits are allowed and dropped, as iptables does (172.32.16.8/16)."""
    dotted = _DOTTED.fullmatch(text.strip())
    if dotted:  # IPv4 from integers: 3x faster than ipaddress' string parsing (10,000 CIDRs in a file)
        *octets, prefix = dotted.groups()
        bits = 32 if prefix is None else int(prefix)
        if all(int(o) <= 255 and (o == "0" or not o.startswith("0")) for o in octets) and bits <= 32:
            address = int.from_bytes(bytes(int(o) for o in octets), "big")
            return ipaddress.IPv4Network((address >> (32 - bits) << (32 - bits), bits))
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR (e.g. 10.0.0.1 or 10.0.0.0/8)") from None


def executables(value) -> str:
    """--iptables-executables as "name:path,...": from that text, or from kumactl's config-file
    mapping `iptablesExecutables: {iptables: /path, iptables-save: /path, ...}`."""
    if isinstance(value, dict):
        return ",".join(f"{name}:{path}" for name, path in value.items() if path)
    return str(value)


def network_list(value) -> tuple:
    return tuple(dict.fromkeys(network(item) for item in _items(value)))


def boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def unsigned(value, upper: int = 2**31 - 1) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if not 0 <= number <= upper:
        raise ValueError(f"{number} is out of range (0-{upper})")
    return number


def duration_seconds(value) -> float:
    """Go-style durations as kumactl takes them: 2s, 500ms, 1m; a bare number means seconds."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text)
    if not match:
        raise ValueError(f"{value!r} is not a duration (e.g. 2s, 500ms, 1m)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


@dataclass(frozen=True)
class ProxyUser:
    """The sidecar's user: its uid, and its name when the host knows one (used in comments)."""

    uid: int
    name: str | None


def proxy_user(value) -> ProxyUser:
    """A user name or uid, as --kuma-dp-user takes it."""
    text = str(value).strip()
    if not text:
        raise ValueError("the user is empty: give a user name or a uid")
    if text.isdigit():
        uid = int(text)
        if uid > 2**32 - 2:
            raise ValueError(f"uid {uid} is out of range (0-{2**32 - 2})")
        try:
            return ProxyUser(uid, pwd.getpwuid(uid).pw_name)
        except KeyError:
            return ProxyUser(uid, None)
    try:
        return ProxyUser(pwd.getpwnam(text).pw_uid, text)
    except KeyError:
        raise ValueError(f"no user named {text!r} on this host (give an existing user or a uid)") from None


def default_proxy_user() -> ProxyUser:
    """kumactl's default: the user kuma-dp if it exists, else uid 5678."""
    try:
        return ProxyUser(pwd.getpwnam(DEFAULT_PROXY_USER).pw_uid, DEFAULT_PROXY_USER)
    except KeyError:
        return ProxyUser(DEFAULT_PROXY_UID, DEFAULT_PROXY_USER)


@dataclass(frozen=True)
class PortsForUids:
    """One --exclude-outbound-ports-for-uids entry: [protocol:][ports:]uids, as integer ranges
    that each engine renders its own way (iptables: multiport and owner texts; eBPF: map rows)."""

    protocols: tuple[str, ...]  # ("tcp", "udp") when none or * was given, as kumactl
    port_ranges: tuple[tuple[int, int], ...]  # inclusive (low, high), in the order given
    uid_range: tuple[int, int]  # inclusive (low, high)

    @property
    def ports(self) -> str:
        """multiport syntax: "53,3000:5000"."""
        return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in self.port_ranges)

    @property
    def uids(self) -> str:
        """owner syntax: "106-108" or "5"."""
        lo, hi = self.uid_range
        return str(lo) if lo == hi else f"{lo}-{hi}"

    @property
    def text(self) -> str:
        """The entry as --exclude-outbound-ports-for-uids takes it: "tcp:53,3000-5000:106-108"."""
        proto = "*" if self.protocols == ("tcp", "udp") else ",".join(self.protocols)
        ports = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.port_ranges)
        return f"{proto}:{ports}:{self.uids}"

    def to_json(self) -> dict:
        return {"protocols": self.protocols, "ports": self.ports, "uids": self.uids}


def _range(text: str, what: str, upper: int) -> tuple[int, int]:
    bounds = text.split("-")
    if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
        raise ValueError(f"{text!r} is not a {what} or a {what} range (e.g. 10 or 10-20)")
    lo, hi = int(bounds[0]), int(bounds[-1])
    if lo > hi or hi > upper or (what == "port" and lo < 1):
        raise ValueError(f"{what} range {text!r} is invalid (1-{upper}, low-high)")
    return lo, hi


def ports_for_uids_list(value) -> tuple[PortsForUids, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    # kumactl documents ';' between entries inside one value
    return tuple(_ports_for_uids(entry.strip()) for raw in items
                 for entry in str(raw).split(";") if entry.strip())


def _ports_for_uids(text: str) -> PortsForUids:
    parts = text.split(":")
    if len(parts) > 3:
        raise ValueError(f"{text!r} is not [protocol:][ports:]uids (e.g. 53,3000-5000:106-108)")
    uid_text = parts.pop()
    port_text = parts.pop() if parts else "*"
    proto_text = parts.pop() if parts else "*"
    protocols = []
    for proto in [p.strip().lower() for p in proto_text.split(",")]:
        if proto in ("", "*"):
            protocols += ["tcp", "udp"]
        elif proto in ("tcp", "udp"):
            protocols.append(proto)
        else:
            raise ValueError(f"protocol {proto!r} in {text!r} must be tcp, udp or *")
    if port_text.strip() in ("", "*"):
        port_text = "1-65535"
    port_ranges = tuple(_range(p.strip(), "port", 65535) for p in port_text.split(",") if p.strip())
    if uid_text.strip() == "*":
        raise ValueError(f"{text!r}: a wildcard is not allowed for uids (give a uid or a range)")
    if "," in uid_text:
        raise ValueError(f"{text!r}: give one uid or one uid range (a-b), not a list")
    lo, hi = _range(uid_text.strip(), "uid", 2**32 - 2)
    protocols_in_order = tuple(p for p in ("tcp", "udp") if p in protocols)
    return PortsForUids(protocols_in_order, port_ranges, (lo, hi))


@dataclass(frozen=True)
class VirtualNetwork:
    """--vnet iface:cidr: TCP arriving on iface for outside cidr goes to the outbound port."""

    interface: str
    cidr: str  # as given, for comments
    network: ipaddress.IPv4Network | ipaddress.IPv6Network


def vnet_list(value) -> tuple[VirtualNetwork, ...]:
    result = []
    for raw in _items(value):
        iface, sep, cidr = raw.partition(":")
        if not sep or not iface or not cidr:
            raise ValueError(f"{raw!r} is not iface:cidr (e.g. docker0:172.17.0.0/16)")
        interface_name(iface)
        result.append(VirtualNetwork(iface, cidr, network(cidr)))
    return tuple(result)


def interface_name(text: str) -> str:
    if not IFNAME_RE.match(text):
        raise ValueError(f"{text!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . - :, optional trailing +)")
    return text


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(str(text).strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def choice(options: tuple[str, ...]):
    def parse(value) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{value!r} is not one of: {', '.join(options)}")
        return text

    return parse
