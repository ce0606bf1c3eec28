"""EbpfSettings: what the caller's Config asks of the eBPF engine (re-exported by engine.py)."""
from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass

DEFAULT_SOURCE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "bpf_src")


@dataclass(frozen=True)
class EbpfSettings:
    proxy_uid: int = 5678                        # its traffic is never redirected
    inbound_port: int = 15006
    outbound_port: int = 15001
    dns_port: int = 15053
    redirect_inbound: bool = True
    redirect_dns: str = "off"                    # "off" | "servers" | "all"
    dns_servers: tuple[str, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_inbound_cidrs: tuple[str, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    # (proto "tcp"|"udp", port_lo, port_hi, uid_lo, uid_hi)
    exclude_outbound_ports_for_uids: tuple[tuple[str, int, int, int, int], ...] = ()
    ipv6: bool = True
    instance_ips: tuple[str, ...] = ()
    tc_iface: str | None = None
    # ARPHRD_* of tc_iface (1: Ethernet), which says how many bytes precede the IP header;
    # None: unreadable (plan refuses the tc programs rather than guess)
    tc_link_type: int | None = 1
    cgroup_path: str = "/sys/fs/cgroup"
    bpffs_path: str = "/sys/fs/bpf"
    programs_source_path: str = DEFAULT_SOURCE_PATH
    accel: bool = False                          # sk_msg local acceleration (opt-in, as the flag)
    # HostFacts the checks judge (None: read them here, for callers without HostFacts)
    kernel_release: str | None = None
    cgroup2_mount: str | None = None


SIOCGIFHWADDR = 0x8927


def interface_link_type(name: str) -> int | None:
    """The ARPHRD_* type of interface `name` in this thread's network namespace (the hardware
    address family SIOCGIFHWADDR reports; /sys/class/net may show another namespace's), or None
    when there is no such interface."""
    request = struct.pack("16s24x", name.encode()[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)
    except OSError:
        return None
    return int(struct.unpack_from("H", answer, 16)[0])
