"""EbpfSettings: what the caller's Config asks of the eBPF engine (re-exported by engine.py)."""
from __future__ import annotations

import os
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
    cgroup_path: str = "/sys/fs/cgroup"
    bpffs_path: str = "/sys/fs/bpf"
    programs_source_path: str = DEFAULT_SOURCE_PATH
    accel: bool = False                          # sk_msg local acceleration (opt-in, as the flag)
    # HostFacts the checks judge (None: read them here, for callers without HostFacts)
    kernel_release: str | None = None
    cgroup2_mount: str | None = None
