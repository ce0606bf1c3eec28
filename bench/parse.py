"""Reading what the tools print: wrk's text report, iperf3's JSON, /proc counters. Pure."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


class ParseError(ValueError):
    pass


_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0, "h": 3_600_000_000.0}
_PERCENTILE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h),", re.M)
_RATE_RE = re.compile(r"^Requests/sec:\s*(\d+(?:\.\d+)?)\s*$", re.M)
_SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rate: float                                   # requests per second
    percentiles_us: dict[float, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout
    non_2xx: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) + self.non_2xx


def wrk(text: str) -> WrkResult:
    """wrk 4.x output (with --latency for the percentiles)."""
    requests = _REQUESTS_RE.search(text)
    rate = _RATE_RE.search(text)
    if not requests or not rate:
        raise ParseError(f"not a wrk report: {text.strip()[:300]!r}")
    percentiles = {float(p): float(v) * _UNITS_US[unit] for p, v, unit in _PERCENTILE_RE.findall(text)}
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if match := _SOCKET_ERRORS_RE.search(text):
        errors = dict(zip(errors, map(int, match.groups())))
    non_2xx = int(match.group(1)) if (match := _NON_2XX_RE.search(text)) else 0
    return WrkResult(requests=int(requests.group(1)),
                     seconds=float(requests.group(2)) * _UNITS_US[requests.group(3)] / 1e6,
                     rate=float(rate.group(1)), percentiles_us=percentiles, errors=errors, non_2xx=non_2xx)


@dataclass(frozen=True)
class IperfResult:
    bits_per_second: float     # as received by the server
    bytes: int
    seconds: float
    retransmits: int


def iperf3(text: str) -> IperfResult:
    """`iperf3 -c ... -J` output."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ParseError(f"iperf3 printed no JSON: {text.strip()[:300]!r}") from None
    if data.get("error"):
        raise ParseError(f"iperf3: {data['error']}")
    try:
        received = data["end"]["sum_received"]
        sent = data["end"]["sum_sent"]
        return IperfResult(bits_per_second=float(received["bits_per_second"]), bytes=int(received["bytes"]),
                           seconds=float(received["seconds"]), retransmits=int(sent.get("retransmits", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise ParseError(f"iperf3 JSON without end.sum_received/sum_sent: {err}") from None


@dataclass(frozen=True)
class CpuTicks:
    busy: int    # user + nice + system + irq + softirq (guest time is already inside user)
    total: int   # busy + idle + iowait (steal excluded: time the hypervisor did not give us)


def proc_stat_cpu(text: str) -> CpuTicks:
    """The aggregate `cpu` line of /proc/stat, in clock ticks."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(x) for x in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq = values[:7]
            busy = user + nice + system + irq + softirq
            return CpuTicks(busy=busy, total=busy + idle + iowait)
    raise ParseError("no aggregate cpu line in /proc/stat")


def proc_pid_cpu(text: str) -> int:
    """utime + stime (clock ticks) from /proc/<pid>/stat; the command name may hold spaces."""
    try:
        fields = text[text.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    except (ValueError, IndexError):
        raise ParseError(f"not a /proc/<pid>/stat line: {text[:120]!r}") from None


def sockstat_tcp_pages(text: str) -> int:
    """The TCP `mem` field of /proc/net/sockstat: pages the host's TCP sockets are charged
    for (tcp_memory_allocated, compared with net.ipv4.tcp_mem)."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            try:
                return int(fields[fields.index("mem") + 1])
            except (ValueError, IndexError):
                break
    raise ParseError("no TCP mem field in /proc/net/sockstat")


def haproxy_frontends(csv_text: str) -> dict[str, dict[str, int]]:
    """Per FRONTEND of HAProxy's `show stat` CSV: total sessions (`stot`) and connections
    denied by `tcp-request connection` rules (`dcon`)."""
    lines = csv_text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ParseError(f"not HAProxy `show stat` output: {csv_text[:200]!r}")
    header = lines[0][2:].split(",")
    try:
        at = {key: header.index(key) for key in ("pxname", "svname", "stot", "dcon")}
    except ValueError:
        raise ParseError("`show stat` header lacks pxname/svname/stot/dcon") from None
    frontends = {}
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) > max(at.values()) and cells[at["svname"]] == "FRONTEND":
            frontends[cells[at["pxname"]]] = {key: int(cells[at[key]] or 0) for key in ("stot", "dcon")}
    return frontends


def bpftool_entry_count(json_text: str) -> int:
    """Entries in `bpftool -j map dump` output (an empty map prints [])."""
    try:
        entries = json.loads(json_text or "[]")
    except ValueError:
        raise ParseError(f"bpftool printed no JSON: {json_text[:200]!r}") from None
    if not isinstance(entries, list):
        raise ParseError("bpftool map dump did not print a list")
    return len(entries)


def _nft_objects(json_text: str, what: str) -> list[dict]:
    """The objects of kind `what` ("set", "table") in `nft -j list ...` output."""
    try:
        data = json.loads(json_text)
    except ValueError:
        raise ParseError(f"nft printed no JSON: {json_text.strip()[:200]!r}") from None
    items = data.get("nftables") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ParseError("nft JSON without an `nftables` list")
    return [item[what] for item in items if isinstance(item, dict) and isinstance(item.get(what), dict)]


def nft_set_elements(json_text: str, family: str, table: str, name: str) -> int:
    """Elements of one set in `nft -j list set FAMILY TABLE NAME` output: a port, a prefix or a
    range each count as one (an interval set that merged its elements shows fewer)."""
    for found in _nft_objects(json_text, "set"):
        if (found.get("family"), found.get("table"), found.get("name")) == (family, table, name):
            elements = found.get("elem", [])  # a set without elements has no "elem"
            if not isinstance(elements, list):
                raise ParseError(f"nft set {family} {table} {name}: `elem` is not a list")
            return len(elements)
    raise ParseError(f"nft listed no set {family} {table} {name}")


def nft_tables(json_text: str) -> set[tuple[str, str]]:
    """(family, name) of every table in `nft -j list tables` output."""
    return {(t.get("family"), t.get("name")) for t in _nft_objects(json_text, "table")}
