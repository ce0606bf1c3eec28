"""The programs and maps of the eBPF engine, as data.

Each program names its source file, its BPF program type, the attach type the kernel must be
told at load time (sock_addr and sockopt programs are verified for one hook only), where it is
attached, and the pin it lives under in <bpffs>/tpctl/. Numbers are the UAPI enum values of
<linux/bpf.h>, so this module imports nothing from BCC and is usable without root.
"""
from __future__ import annotations

from dataclasses import dataclass

# enum bpf_prog_type
PROG_SCHED_CLS = 3
PROG_SOCK_OPS = 13
PROG_SK_MSG = 16
PROG_CGROUP_SOCK_ADDR = 18
PROG_CGROUP_SOCKOPT = 25

# enum bpf_attach_type
ATTACH_CGROUP_SOCK_OPS = 3
ATTACH_SK_MSG_VERDICT = 7
ATTACH_CGROUP_INET4_CONNECT = 10
ATTACH_CGROUP_INET6_CONNECT = 11
ATTACH_CGROUP_UDP4_SENDMSG = 14
ATTACH_CGROUP_UDP6_SENDMSG = 15
ATTACH_CGROUP_UDP4_RECVMSG = 19
ATTACH_CGROUP_UDP6_RECVMSG = 20
ATTACH_CGROUP_GETSOCKOPT = 21
ATTACH_CGROUP_INET4_GETPEERNAME = 29
ATTACH_CGROUP_INET6_GETPEERNAME = 30

ATTACH_TYPE_NAMES = {
    ATTACH_CGROUP_SOCK_OPS: "cgroup_sock_ops",
    ATTACH_SK_MSG_VERDICT: "sk_msg_verdict",
    ATTACH_CGROUP_INET4_CONNECT: "cgroup_inet4_connect",
    ATTACH_CGROUP_INET6_CONNECT: "cgroup_inet6_connect",
    ATTACH_CGROUP_UDP4_SENDMSG: "cgroup_udp4_sendmsg",
    ATTACH_CGROUP_UDP6_SENDMSG: "cgroup_udp6_sendmsg",
    ATTACH_CGROUP_UDP4_RECVMSG: "cgroup_udp4_recvmsg",
    ATTACH_CGROUP_UDP6_RECVMSG: "cgroup_udp6_recvmsg",
    ATTACH_CGROUP_GETSOCKOPT: "cgroup_getsockopt",
    ATTACH_CGROUP_INET4_GETPEERNAME: "cgroup_inet4_getpeername",
    ATTACH_CGROUP_INET6_GETPEERNAME: "cgroup_inet6_getpeername",
}

PROG_TYPE_NAMES = {
    PROG_SCHED_CLS: "sched_cls",
    PROG_SOCK_OPS: "sock_ops",
    PROG_SK_MSG: "sk_msg",
    PROG_CGROUP_SOCK_ADDR: "cgroup_sock_addr",
    PROG_CGROUP_SOCKOPT: "cgroup_sockopt",
}

HOOK_CGROUP = "cgroup"
HOOK_TC_INGRESS = "tc-ingress"
HOOK_TC_EGRESS = "tc-egress"
HOOK_SK_MSG = "sk_msg"

PIN_DIR_NAME = "tpctl"


@dataclass(frozen=True)
class Program:
    name: str
    source: str              # file in bpf_src/
    prog_type: int
    attach_type: int | None  # expected attach type at load and at BPF_PROG_ATTACH; None for tc
    hook: str                # HOOK_*
    optional: bool = False   # may be missing on older kernels (getpeername needs 5.8)
    feature: str = "core"    # which setting turns it on: core, inbound, dns, accel

    @property
    def pin_name(self) -> str:
        return f"prog_{self.name}"


PROGRAMS: tuple[Program, ...] = (
    Program("tp_sock4_connect", "tp_connect.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_INET4_CONNECT, HOOK_CGROUP),
    Program("tp_sock6_connect", "tp_connect.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_INET6_CONNECT, HOOK_CGROUP),
    Program("tp_sockops", "tp_sockops.c", PROG_SOCK_OPS, ATTACH_CGROUP_SOCK_OPS, HOOK_CGROUP),
    Program("tp_getsockopt", "tp_getsockopt.c", PROG_CGROUP_SOCKOPT,
            ATTACH_CGROUP_GETSOCKOPT, HOOK_CGROUP),
    Program("tp_sock4_sendmsg", "tp_dns.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_UDP4_SENDMSG, HOOK_CGROUP, feature="dns"),
    Program("tp_sock6_sendmsg", "tp_dns.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_UDP6_SENDMSG, HOOK_CGROUP, feature="dns"),
    Program("tp_sock4_recvmsg", "tp_dns.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_UDP4_RECVMSG, HOOK_CGROUP, feature="dns"),
    Program("tp_sock6_recvmsg", "tp_dns.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_UDP6_RECVMSG, HOOK_CGROUP, feature="dns"),
    Program("tp_sock4_getpeername", "tp_getpeername.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_INET4_GETPEERNAME, HOOK_CGROUP, optional=True),
    Program("tp_sock6_getpeername", "tp_getpeername.c", PROG_CGROUP_SOCK_ADDR,
            ATTACH_CGROUP_INET6_GETPEERNAME, HOOK_CGROUP, optional=True),
    Program("tp_tc_ingress", "tp_tc.c", PROG_SCHED_CLS, None, HOOK_TC_INGRESS,
            feature="inbound"),
    Program("tp_tc_egress", "tp_tc.c", PROG_SCHED_CLS, None, HOOK_TC_EGRESS,
            feature="inbound"),
    Program("tp_sk_msg", "tp_skmsg.c", PROG_SK_MSG, ATTACH_SK_MSG_VERDICT, HOOK_SK_MSG,
            feature="accel"),
)

# Hook files in compile order; each is self-contained (includes what it uses).
SOURCES: tuple[str, ...] = tuple(dict.fromkeys(p.source for p in PROGRAMS))
# The only optional hook file: compiled when --ebpf-sk-msg-accel asks for it (compile.sources_for).
ACCEL_SOURCE = "tp_skmsg.c"

# Every map of include/tp_maps.h; all are pinned as map_<name>.
MAPS: tuple[str, ...] = (
    "tp_settings", "tp_excl_out_ports", "tp_excl_in_ports",
    "tp_excl_out_v4", "tp_excl_out_v6", "tp_excl_in_v4", "tp_excl_in_v6",
    "tp_uid_port_excl", "tp_dns_v4", "tp_dns_v6", "tp_instance_v4", "tp_instance_v6",
    "tp_cookie_orig", "tp_tuple_orig", "tp_in_flows", "tp_sock_hash", "tp_install_meta",
    "tp_drops",
)

SOCKHASH_MAP = "tp_sock_hash"
META_MAP = "tp_install_meta"


def map_pin_name(map_name: str) -> str:
    return f"map_{map_name}"


def program(name: str) -> Program:
    for prog in PROGRAMS:
        if prog.name == name:
            return prog
    raise KeyError(name)
