"""Parsers for flag values, shared by click parameters, environment variables and config files.

Each parser takes the raw text (or a YAML scalar/list) and returns a typed value, or raises
ValueError with a message that says what is wrong and what is expected. The caller adds the
flag name, so one message serves every source. Every grammar is strict and anchored (fullmatch:
`$` would match before a trailing newline), so whatever is rendered later (iptables-restore
input, nft scripts, unit and YAML files, argv) comes from the typed value, never from what the
user typed. The grammars and caps: docs/hostile-input.md.
"""
from __future__ import annotations

import contextlib
import ipaddress
import pwd
import re
from dataclasses import dataclass

DEFAULT_PROXY_USER = "kuma-dp"
DEFAULT_PROXY_UID = 5678
MAX_UID = 2**32 - 2
LIST_CAP = 16384  # entries per list flag: above the 10,000 + 10,000 the scale bench installs
PATH_MAX = 4095  # bytes, as the kernel's PATH_MAX less the NUL
# The kernel takes 1-15 bytes without '/', ':' or whitespace; tpctl takes the portable part of
# that (no quotes, no control or non-ASCII bytes), which every renderer can write unquoted.
IFNAME = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
IFNAME_HELP = "1-15 characters of A-Z a-z 0-9 _ . - @, not . or .."
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")  # POSIX portable user names
DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: int() would also take "١٢" and "1_000"
LONGEST_ADDRESS = 64  # an IPv6 address with an IPv4 tail and a prefix fits in 50
OVERLAP_BUDGET = 1_000_000  # ports-for-uids: (uid piece, port range) pairs, about 0.1 s of planning


def shown(text, limit: int = 48) -> str:
    """User text quoted for an error message: escaped, and cut when long."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _whole(value, what: str) -> int:
    """A YAML integer, or ASCII digits with optional blanks around them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip(" \t")
    if isinstance(value, bool) or not DIGITS.fullmatch(text):
        raise ValueError(f"{shown(value)} is not {what}")
    return int(text)


def port(text) -> int:
    value = _whole(text, "a port number (1-65535)")
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is out of range (ports are 1-65535)")
    return value


def _items(value) -> list[str]:
    """Accept "a,b", ["a", "b,c"] or a single scalar; return the non-empty items, at most
    LIST_CAP of them (counted before duplicates are dropped: the cap also bounds the work)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        raw = [str(v) for v in value]
    else:
        raw = [str(value)]
    return _capped([item.strip() for chunk in raw for item in chunk.split(",") if item.strip()])


def _capped(items: list) -> list:
    if len(items) > LIST_CAP:
        raise ValueError(f"{len(items)} entries, more than the cap of {LIST_CAP} per list "
                         "(docs/hostile-input.md; with iptables each entry is a rule)")
    return items


def port_list(value) -> tuple[int, ...]:
    return tuple(dict.fromkeys(port(item) for item in _items(value)))


_DOTTED = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?")


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR; host bits are allowed and dropped, as iptables does (172.32.16.8/16).
    No zone id (fe80::1%eth0): ipaddress keeps any text after '%', and it would be rendered."""
    text = _address_text(text, "an IP address or CIDR (e.g. 10.0.0.1 or 10.0.0.0/8)")
    dotted = _DOTTED.fullmatch(text)
    if dotted:  # IPv4 from integers: 3x faster than ipaddress' string parsing (10,000 CIDRs in a file)
        *octets, prefix = dotted.groups()
        bits = 32 if prefix is None else int(prefix)
        if all(int(o) <= 255 and (o == "0" or not o.startswith("0")) for o in octets) and bits <= 32:
            address = int.from_bytes(bytes(int(o) for o in octets), "big")
            return ipaddress.IPv4Network((address >> (32 - bits) << (32 - bits), bits))
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{shown(text)} is not an IP address or CIDR (e.g. 10.0.0.1 or 10.0.0.0/8)") from None


def _address_text(value, what: str) -> str:
    text = str(value).strip()
    if "%" in text:
        raise ValueError(f"{shown(text)}: a zone id (%...) is not accepted; give the address without it")
    if len(text) > LONGEST_ADDRESS or not text.isascii():
        raise ValueError(f"{shown(text)} is not {what}")
    return text


EXECUTABLE_NAMES = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                    "ip6tables-restore")


def executables(value) -> str:
    """--iptables-executables as "name:path,...": from that text, or from kumactl's config-file
    mapping `iptablesExecutables: {iptables: /path, iptables-save: /path, ...}`. Names from
    kumactl's set, absolute paths; the canonical text is rendered from the checked pairs."""
    if isinstance(value, dict):
        pairs = [(str(name), path) for name, path in value.items() if path]
    else:
        pairs = [(name, path) for name, _sep, path in (item.partition(":") for item in _items(value))]
    typed: dict[str, str] = {}
    for name, raw_path in _capped(pairs):
        if name.strip() not in EXECUTABLE_NAMES:
            raise ValueError(f"{shown(name)} is not one of {', '.join(EXECUTABLE_NAMES)} "
                             "(give name:/absolute/path pairs)")
        checked = absolute_path(str(raw_path).strip())
        if "," in checked:
            raise ValueError(f"{shown(checked)}: a path here cannot hold ',' (it separates the pairs)")
        typed[name.strip()] = checked
    return ",".join(f"{name}:{path}" for name, path in typed.items())


def path(value) -> str:
    """A file or directory name: 1-4095 printable ASCII characters (no control characters, so
    no newline can split a rendered line), no blanks at either end, components of 1-255 bytes."""
    text = str(value)
    if not text or len(text) > PATH_MAX or not all(" " <= ch <= "~" for ch in text) or text != text.strip():
        raise ValueError(f"{shown(text)} is not a usable path (1-{PATH_MAX} printable ASCII characters, "
                         "no control characters, no blanks at either end)")
    if any(len(part) > 255 for part in text.split("/")):
        raise ValueError(f"{shown(text)} has a path component longer than 255 bytes")
    return text


def absolute_path(value) -> str:
    text = path(value)
    if not text.startswith("/"):
        raise ValueError(f"{shown(text)} is not an absolute path (start it with /)")
    return text


def cgroup_path(value) -> str:
    """--ebpf-cgroup-path: "auto" (the cgroup2 root) or an absolute directory."""
    return "auto" if str(value).strip() == "auto" else absolute_path(value)


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
    raise ValueError(f"{shown(value)} is not a boolean (true/false)")


def unsigned(value, upper: int = 2**31 - 1) -> int:
    number = _whole(value, "a whole number")
    if not 0 <= number <= upper:
        raise ValueError(f"{number} is out of range (0-{upper})")
    return number


def duration_seconds(value, upper: float = 3600.0) -> float:
    """Go-style durations as kumactl takes them: 2s, 500ms, 1m; a bare number means seconds."""
    text = str(value).strip(" \t")
    match = re.fullmatch(r"([0-9]{1,9}(?:\.[0-9]{1,9})?)(ms|s|m|h)?", text)
    if isinstance(value, bool) or not match:
        raise ValueError(f"{shown(value)} is not a duration (e.g. 2s, 500ms, 1m)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    seconds = float(match.group(1)) * scale
    if seconds > upper:
        raise ValueError(f"{text} is more than the upper bound of {upper:g}s")
    return seconds


@dataclass(frozen=True)
class ProxyUser:
    """The sidecar's user: its uid, and its name when the host knows one (used in comments)."""

    uid: int
    name: str | None


def proxy_user(value) -> ProxyUser:
    """A user name or uid, as --kuma-dp-user takes it. The name kept for comments is the
    host's, and only when it fits the same grammar (the passwd file is text too)."""
    text = str(value).strip(" \t")
    if not text:
        raise ValueError("the user is empty: give a user name or a uid")
    if DIGITS.fullmatch(text):
        uid = int(text)
        if uid > MAX_UID:
            raise ValueError(f"uid {uid} is out of range (0-{MAX_UID})")
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return ProxyUser(uid, None)
        return ProxyUser(uid, name if USER_NAME.fullmatch(name) else None)
    if not USER_NAME.fullmatch(text):
        # a directory's name (SSSD, LDAP: kuma-dp@corp.example) is the host's to resolve; only its
        # uid is used then, never the text
        if len(text) <= 256 and text.isprintable() and not any(c.isspace() for c in text):
            with contextlib.suppress(KeyError):
                return ProxyUser(pwd.getpwnam(text).pw_uid, None)
        raise ValueError(f"{shown(text)} is not a uid or a user name on this host (a portable name is 1-32 of "
                         "A-Z a-z 0-9 _ . -, not starting with - or .)")
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
    if len(bounds) > 2 or not all(DIGITS.fullmatch(b.strip(" \t")) for b in bounds):
        raise ValueError(f"{shown(text)} is not a {what} or a {what} range (e.g. 10 or 10-20)")
    lo, hi = int(bounds[0]), int(bounds[-1])
    if lo > hi or hi > upper or (what == "port" and lo < 1):
        raise ValueError(f"{what} range {text!r} is invalid (1-{upper}, low-high)")
    return lo, hi


def ports_for_uids_list(value) -> tuple[PortsForUids, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    # kumactl documents ';' between entries inside one value
    entries = _capped([entry.strip() for raw in items for entry in str(raw).split(";") if entry.strip()])
    return bounded_overlap(tuple(_ports_for_uids(entry) for entry in entries))


def joined(value: tuple) -> tuple:
    """The limits of one list again, for the values of a repeated flag once they are joined."""
    _capped(list(value))
    if value and isinstance(value[0], PortsForUids):
        bounded_overlap(value)
    return value


def bounded_overlap(entries: tuple[PortsForUids, ...]) -> tuple[PortsForUids, ...]:
    """Entries whose uid ranges overlap make the nftables set (and the planning) grow with
    the overlap: cut the uid axis where ranges begin and end, and count, over the pieces, the
    port ranges covering each; at most OVERLAP_BUDGET (disjoint entries count one each)."""
    for proto in ("tcp", "udp"):
        deltas: dict[int, int] = {}
        for entry in entries:
            if proto in entry.protocols:
                lo, hi = entry.uid_range
                deltas[lo] = deltas.get(lo, 0) + len(entry.port_ranges)
                deltas[hi + 1] = deltas.get(hi + 1, 0) - len(entry.port_ranges)
        active = work = 0
        for cut in sorted(deltas):
            active += deltas[cut]
            work += active
        if work > OVERLAP_BUDGET:
            raise ValueError(f"the {proto} entries' uid ranges overlap too much ({work:,} port ranges over the "
                             f"uid pieces, at most {OVERLAP_BUDGET:,}): merge entries that share uids")
    return entries


def _ports_for_uids(text: str) -> PortsForUids:
    parts = text.split(":")
    if len(parts) > 3:
        raise ValueError(f"{shown(text)} is not [protocol:][ports:]uids (e.g. 53,3000-5000:106-108)")
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
            raise ValueError(f"protocol {shown(proto)} in {shown(text)} must be tcp, udp or *")
    if port_text.strip() in ("", "*"):
        port_text = "1-65535"
    port_ranges = tuple(_range(p.strip(), "port", 65535) for p in port_text.split(",") if p.strip())
    if not port_ranges:
        raise ValueError(f"{shown(text)}: no ports (give ports, a range or *)")
    if uid_text.strip() == "*":
        raise ValueError(f"{text!r}: a wildcard is not allowed for uids (give a uid or a range)")
    if "," in uid_text:
        raise ValueError(f"{text!r}: give one uid or one uid range (a-b), not a list")
    lo, hi = _range(uid_text.strip(), "uid", MAX_UID)
    protocols_in_order = tuple(p for p in ("tcp", "udp") if p in protocols)
    return PortsForUids(protocols_in_order, port_ranges, (lo, hi))


@dataclass(frozen=True)
class VirtualNetwork:
    """--vnet iface:cidr: TCP arriving on iface for outside cidr goes to the outbound port."""

    interface: str  # interface_name(wildcard=True)
    cidr: str  # the address/prefix as given (host bits kept, for comments), rendered from its type
    network: ipaddress.IPv4Network | ipaddress.IPv6Network


def vnet_list(value) -> tuple[VirtualNetwork, ...]:
    result = []
    for raw in _items(value):
        iface, sep, cidr = raw.partition(":")
        if not sep or not iface or not cidr:
            raise ValueError(f"{shown(raw)} is not iface:cidr (e.g. docker0:172.17.0.0/16)")
        interface_name(iface, wildcard=True)
        net = network(cidr)
        given = ipaddress.ip_interface(cidr.strip())
        result.append(VirtualNetwork(iface, str(given) if "/" in cidr else str(given.ip), net))
    return tuple(result)


def interface_name(text, wildcard: bool = False) -> str:
    """A network interface name; with `wildcard`, a trailing + means every name starting so
    (iptables' -i br+, nft's "br*")."""
    name = str(text)
    stem = name[:-1] if wildcard and name.endswith("+") else name
    # the kernel's IFNAMSIZ counts the + too (iptables -i, nft's "name*"): 15 characters in all
    if not IFNAME.fullmatch(stem) or stem in (".", "..") or len(name) > 15:
        plus = ", optionally ending in + for every name starting so, 15 characters with the +" if wildcard else ""
        raise ValueError(f"{shown(name)} is not an interface name ({IFNAME_HELP}{plus})")
    return name


def ip_address(text) -> str:
    try:
        return str(ipaddress.ip_address(_address_text(text, "an IP address")))
    except ValueError as err:
        message = str(err) if "zone id" in str(err) else f"{shown(text)} is not an IP address"
        raise ValueError(message) from None


def choice(options: tuple[str, ...]):
    def parse(value) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{shown(value)} is not one of: {', '.join(options)}")
        return text

    return parse
