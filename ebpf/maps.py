"""Typed access to the pinned maps: ctypes mirrors of bpf_src/include/tp_types.h and the
conversion between plan entries (plain Python: ints, address strings) and map bytes.

tests/ebpf/test_layouts.py compiles tp_types.h and checks every size and offset here.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from . import libbpf

MAX_UID_RANGES = 16
MAX_CIDRS = 65536  # TP_MAX_CIDRS in bpf_src/include/tp_types.h, per address family
DNS_MODES = {"off": 0, "servers": 1, "all": 2}
PROTOS = {"tcp": 6, "udp": 17}
# tp_drops indices (TP_DROP_* in bpf_src/include/tp_types.h), in order
DROP_REASONS = ("ipv4_fragment", "ipv6_fragment", "header_chain", "ipv6_routed")
DROPS_MAP = "tp_drops"


class TpSettings(ct.Structure):
    _fields_ = [("proxy_uid", ct.c_uint32), ("inbound_port", ct.c_uint16),
                ("outbound_port", ct.c_uint16), ("dns_port", ct.c_uint16),
                ("redirect_inbound", ct.c_uint8), ("redirect_dns", ct.c_uint8),
                ("ipv6", ct.c_uint8), ("accel", ct.c_uint8), ("uid_range_count", ct.c_uint8),
                ("l3_iface", ct.c_uint8)]


class TpUidPortRange(ct.Structure):
    _fields_ = [("uid_lo", ct.c_uint32), ("uid_hi", ct.c_uint32), ("port_lo", ct.c_uint16),
                ("port_hi", ct.c_uint16), ("proto", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class TpLpmV4(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 4)]


class TpLpmV6(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 16)]


class TpOrig(ct.Structure):
    _fields_ = [("addr", ct.c_uint32 * 4), ("port", ct.c_uint16), ("family", ct.c_uint16)]


class TpTuple(ct.Structure):
    _fields_ = [("local", ct.c_uint32 * 4), ("remote", ct.c_uint32 * 4),
                ("local_port", ct.c_uint16), ("remote_port", ct.c_uint16),
                ("family", ct.c_uint32)]


class TpInFlow(ct.Structure):
    _fields_ = [("remote", ct.c_uint32 * 4), ("local", ct.c_uint32 * 4),
                ("remote_port", ct.c_uint16), ("family", ct.c_uint16)]


class TpInstallMeta(ct.Structure):
    _fields_ = [("cgroup_path", ct.c_char * 256), ("tc_ifindex", ct.c_uint32),
                ("tc_prio", ct.c_uint32), ("clsact_created", ct.c_uint8),
                ("accel_attached", ct.c_uint8), ("pad", ct.c_uint8 * 2)]


# Python value <-> ctypes converters, per key/value kind used in the maps.

def _u16(v: int) -> ct.c_uint16:
    return ct.c_uint16(v)


def _u8(v: int) -> ct.c_uint8:
    return ct.c_uint8(v)


def _u32(v: int) -> ct.c_uint32:
    return ct.c_uint32(v)


def _v4_be(addr: str) -> ct.c_uint32:
    # network byte order, as the kernel stores addresses
    return ct.c_uint32(int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "little"))


def _v4_from_be(v: ct.c_uint32) -> str:
    return socket.inet_ntop(socket.AF_INET, int(v.value).to_bytes(4, "little"))


def _lpm(cidr: str):
    net = ipaddress.ip_network(cidr, strict=False)
    cls = TpLpmV4 if net.version == 4 else TpLpmV6
    key = cls(prefixlen=net.prefixlen)
    ct.memmove(key.addr, net.network_address.packed, len(net.network_address.packed))
    return key


def _from_lpm(key) -> str:
    raw = bytes(key.addr)
    addr = ipaddress.ip_address(raw)
    return f"{addr}/{key.prefixlen}"


def _settings(v: dict) -> TpSettings:
    return TpSettings(**v)


def _from_settings(s: TpSettings) -> dict:
    return {f[0]: getattr(s, f[0]) for f in TpSettings._fields_ if f[0] != "pad"}


def _uid_range(v: dict) -> TpUidPortRange:
    return TpUidPortRange(**v)


def _from_uid_range(r: TpUidPortRange) -> dict:
    return {f[0]: getattr(r, f[0]) for f in TpUidPortRange._fields_ if f[0] != "pad"}


def _meta(v: dict) -> TpInstallMeta:
    return TpInstallMeta(cgroup_path=v["cgroup_path"].encode(), tc_ifindex=v["tc_ifindex"],
                         tc_prio=v["tc_prio"], clsact_created=int(v["clsact_created"]),
                         accel_attached=int(v["accel_attached"]))


def _from_meta(m: TpInstallMeta) -> dict:
    return {"cgroup_path": m.cgroup_path.decode(), "tc_ifindex": m.tc_ifindex,
            "tc_prio": m.tc_prio, "clsact_created": bool(m.clsact_created),
            "accel_attached": bool(m.accel_attached)}


@dataclass(frozen=True)
class Layout:
    key_type: Any
    value_type: Any
    encode_key: Callable[[Any], Any]
    encode_value: Callable[[Any], Any]
    decode_key: Callable[[Any], Any]
    decode_value: Callable[[Any], Any]


def _ident(x):
    return x.value


_PORT_SET = Layout(ct.c_uint16, ct.c_uint8, _u16, _u8, _ident, _ident)
_LPM4 = Layout(TpLpmV4, ct.c_uint8, _lpm, _u8, _from_lpm, _ident)
_LPM6 = Layout(TpLpmV6, ct.c_uint8, _lpm, _u8, _from_lpm, _ident)
_ADDR4_SET = Layout(ct.c_uint32, ct.c_uint8, _v4_be, _u8, _v4_from_be, _ident)
# v6 address sets reuse the LPM key shape with prefixlen 128 (see tp_maps.h)
_ADDR6_SET = Layout(TpLpmV6, ct.c_uint8, lambda a: _lpm(f"{a}/128"), _u8,
                    lambda k: _from_lpm(k).split("/")[0], _ident)

# The maps user space writes (settings) or reads back for status.
LAYOUTS: dict[str, Layout] = {
    "tp_settings": Layout(ct.c_uint32, TpSettings, _u32, _settings, _ident, _from_settings),
    "tp_excl_out_ports": _PORT_SET,
    "tp_excl_in_ports": _PORT_SET,
    "tp_excl_out_v4": _LPM4,
    "tp_excl_out_v6": _LPM6,
    "tp_excl_in_v4": _LPM4,
    "tp_excl_in_v6": _LPM6,
    "tp_uid_port_excl": Layout(ct.c_uint32, TpUidPortRange, _u32, _uid_range, _ident,
                               _from_uid_range),
    "tp_dns_v4": _ADDR4_SET,
    "tp_dns_v6": _ADDR6_SET,
    "tp_instance_v4": _ADDR4_SET,
    "tp_instance_v6": _ADDR6_SET,
    "tp_install_meta": Layout(ct.c_uint32, TpInstallMeta, _u32, _meta, _ident, _from_meta),
}


class TypedMap:
    """One map, opened by fd, read and written with Python values."""

    def __init__(self, name: str, fd: int):
        self.name = name
        self.fd = fd
        self.layout = LAYOUTS[name]

    def put(self, key: Any, value: Any) -> None:
        libbpf.map_update(self.fd, self.layout.encode_key(key), self.layout.encode_value(value))

    def delete(self, key: Any) -> bool:
        return libbpf.map_delete(self.fd, self.layout.encode_key(key))

    def get(self, key: Any) -> Any | None:
        value = self.layout.value_type()
        if not libbpf.map_lookup(self.fd, self.layout.encode_key(key), value):
            return None
        return self.layout.decode_value(value)

    def items(self, limit: int = 4096) -> Iterator[tuple[Any, Any]]:
        prev = None
        for _ in range(limit):
            nxt = self.layout.key_type()
            if not libbpf.map_next_key(self.fd, prev, nxt):
                return
            value = self.layout.value_type()
            if libbpf.map_lookup(self.fd, nxt, value):
                yield self.layout.decode_key(nxt), self.layout.decode_value(value)
            prev = nxt


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many values a per-CPU map holds per key: one per possible CPU ("0-3,8-11")."""
    with open(path, encoding="ascii") as handle:
        text = handle.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def read_drops(fd: int, cpus: int | None = None) -> dict[str, int]:
    """tp_drops summed over CPUs: {reason: packets tc ingress dropped for it}."""
    cpus = cpus or possible_cpus()
    totals = {}
    for index, reason in enumerate(DROP_REASONS):
        per_cpu = (ct.c_uint64 * cpus)()
        found = libbpf.map_lookup(fd, ct.c_uint32(index), per_cpu)
        totals[reason] = sum(per_cpu) if found else 0
    return totals
