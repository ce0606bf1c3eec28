/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Structs shared between the BPF programs and user space (ebpf/maps.py mirrors each one with a
 * ctypes Structure; tests/ebpf checks sizes and offsets against this file). Plain fixed-width
 * types and explicit padding only, so the layout is the same for clang -target bpf and gcc.
 */
#ifndef TP_TYPES_H
#define TP_TYPES_H

#include <linux/types.h>

#define TP_MAX_UID_RANGES 16
/* Capacity of the exclusion maps; ebpf/plan.py refuses larger lists with the flag named. */
#define TP_MAX_PORTS 65535
#define TP_MAX_CIDRS 65536

#define TP_DNS_OFF 0
#define TP_DNS_SERVERS 1
#define TP_DNS_ALL 2

/* Why tc ingress dropped a packet instead of letting it reach an app's port unredirected:
 * the index into tp_drops (ebpf/maps.py DROP_REASONS names them in this order). */
#define TP_DROP_V4_FRAGMENT 0	/* an IPv4 TCP fragment: ports unknown until reassembly */
#define TP_DROP_V6_FRAGMENT 1	/* an IPv6 fragment that may hold TCP */
#define TP_DROP_HEADER_CHAIN 2	/* headers longer than the walk's bound, truncated or malformed */
#define TP_DROP_V6_ROUTED 3	/* TCP behind a Routing header with segments left */
#define TP_DROP_REASONS 4

/* Every run-time setting; one element of tp_settings. Ports in host byte order. */
struct tp_settings {
	__u32 proxy_uid;
	__u16 inbound_port;
	__u16 outbound_port;
	__u16 dns_port;
	__u8 redirect_inbound;
	__u8 redirect_dns;	/* TP_DNS_* */
	__u8 ipv6;
	__u8 accel;
	__u8 uid_range_count;	/* used elements of tp_uid_port_excl */
	__u8 l3_iface;		/* 1: the tc interface has no link header (tun, WireGuard);
				 * 0: Ethernet, also what an older install's settings say */
};

/* --exclude-outbound-ports-for-uids: proto 6 (tcp) or 17 (udp), inclusive ranges. */
struct tp_uid_port_range {
	__u32 uid_lo;
	__u32 uid_hi;
	__u16 port_lo;
	__u16 port_hi;
	__u8 proto;
	__u8 pad[3];
};

struct tp_lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct tp_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Where a redirected socket was going. addr: IPv4 in addr[0], network order; port: network order. */
struct tp_orig {
	__u32 addr[4];
	__u16 port;
	__u16 family;	/* AF_INET or AF_INET6 */
};

/*
 * A TCP connection as seen from one of its sockets. IPv4 addresses in local[0] / remote[0]
 * (network order), the rest zero; ports in host order.
 */
struct tp_tuple {
	__u32 local[4];
	__u32 remote[4];
	__u16 local_port;
	__u16 remote_port;
	__u32 family;
};

/* An inbound flow redirected by tc, as seen from the local side; remote_port in host order. */
struct tp_in_flow {
	__u32 remote[4];
	__u32 local[4];
	__u16 remote_port;
	__u16 family;
};

/* Bookkeeping that lets uninstall and status work from the pins alone. */
struct tp_install_meta {
	char cgroup_path[256];
	__u32 tc_ifindex;
	__u32 tc_prio;
	__u8 clsact_created;
	__u8 accel_attached;
	__u8 pad[2];
};

#endif
