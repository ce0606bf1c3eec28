"""Read-only rtnetlink dumps with the standard library: links, addresses, tc filters.

What install and status only read (which interfaces exist, their addresses, whether our tc
filters hang where recorded) does not need pyroute2, whose import alone costs more than the
0.3 s a reinstall over an unchanged eBPF install may take. Changes (addresses, qdiscs,
filters) still go through pyroute2, which only a full install pays for.
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_GETLINK, RTM_GETADDR, RTM_GETTFILTER = 18, 22, 46
IFLA_IFNAME = 3
IFA_ADDRESS = 1
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_NAME, TCA_BPF_ID = 7, 11
IFF_UP = 0x1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # rtattr: len, type
_ATTR_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER


class NetlinkError(OSError):
    pass


def _dump(msg_type: int, body: bytes) -> Iterator[bytes]:
    """The payloads of one dump's answers (each message's body after its header)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError("malformed netlink message")
                payload = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise NetlinkError(-code, f"netlink dump {msg_type}: {os.strerror(-code)}")
                    continue
                yield payload


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    found = {}
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & _ATTR_TYPE_MASK] = data[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def links() -> list[dict]:
    """[{"index", "name", "up"}] of this network namespace."""
    out = []
    for payload in _dump(RTM_GETLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)):
        _family, _type, index, flags, _change = struct.unpack_from("=BxHiII", payload)
        name = _attrs(payload, 16).get(IFLA_IFNAME)
        out.append({"index": index, "name": _text(name) if name else "", "up": bool(flags & IFF_UP)})
    return out


def addresses(family: int = socket.AF_UNSPEC) -> list[tuple[int, str]]:
    """[(interface index, address)] as IFA_ADDRESS reports them."""
    out = []
    for payload in _dump(RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, 0)):
        fam, _prefixlen, _flags, _scope, index = struct.unpack_from("=BBBBI", payload)
        raw = _attrs(payload, 8).get(IFA_ADDRESS)
        if raw and fam in (socket.AF_INET, socket.AF_INET6):
            out.append((index, socket.inet_ntop(fam, raw)))
    return out


def bpf_filters(ifindex: int, parent: int) -> list[dict]:
    """The bpf filters under one qdisc parent: [{"prio", "handle", "name", "prog_id"}]; none
    when the parent does not exist (no clsact)."""
    out = []
    try:
        for payload in _dump(RTM_GETTFILTER, struct.pack("=BxHiIII", socket.AF_UNSPEC, 0, ifindex, 0, parent, 0)):
            _family, _pad, _index, handle, _parent, info = struct.unpack_from("=BxHiIII", payload)
            attrs = _attrs(payload, 20)
            if _text(attrs.get(TCA_KIND, b"")) != "bpf" or TCA_OPTIONS not in attrs:
                continue
            options = _attrs(attrs[TCA_OPTIONS])
            prog_id = struct.unpack("=I", options[TCA_BPF_ID])[0] if len(options.get(TCA_BPF_ID, b"")) == 4 else 0
            out.append({"prio": (info >> 16) & 0xFFFF, "handle": handle,
                        "name": _text(options.get(TCA_BPF_NAME, b"")), "prog_id": prog_id})
    except NetlinkError:
        return []
    return out
