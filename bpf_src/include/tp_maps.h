/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map, declared once. All are pinned under <bpffs>/tpctl/ by ebpf/pins.py so that the
 * programs keep working after tpctl exits and status/uninstall can find them again.
 */
#ifndef TP_MAPS_H
#define TP_MAPS_H

#include "tp_types.h"

/* Why: one compiled object serves every config; user space writes the ports/uid/flags here. */
BPF_ARRAY(tp_settings, struct tp_settings, 1);

/* Why: --exclude-outbound-ports must be checked per connect without recompiling. Room for every
 * port; BPF_F_NO_PREALLOC so the kernel allocates only the entries written, not 65535 up front. */
BPF_F_TABLE("hash", __u16, __u8, tp_excl_out_ports, TP_MAX_PORTS, BPF_F_NO_PREALLOC);

/* Why: --exclude-inbound-ports, checked by tc ingress on the first SYN. */
BPF_F_TABLE("hash", __u16, __u8, tp_excl_in_ports, TP_MAX_PORTS, BPF_F_NO_PREALLOC);

/* Why: --exclude-outbound-ips takes CIDRs; an LPM trie answers "inside any prefix" in one lookup.
 * Tries are never preallocated, so a large TP_MAX_CIDRS costs nothing until used. */
BPF_LPM_TRIE(tp_excl_out_v4, struct tp_lpm_v4, __u8, TP_MAX_CIDRS);
BPF_LPM_TRIE(tp_excl_out_v6, struct tp_lpm_v6, __u8, TP_MAX_CIDRS);

/* Why: --exclude-inbound-ips matches the source of inbound SYNs, also by prefix. */
BPF_LPM_TRIE(tp_excl_in_v4, struct tp_lpm_v4, __u8, TP_MAX_CIDRS);
BPF_LPM_TRIE(tp_excl_in_v6, struct tp_lpm_v6, __u8, TP_MAX_CIDRS);

/* Why: --exclude-outbound-ports-for-uids are ranges, not keys; a small array scanned in order. */
BPF_ARRAY(tp_uid_port_excl, struct tp_uid_port_range, TP_MAX_UID_RANGES);

/* Why: --redirect-dns only redirects queries to the resolv.conf servers. */
BPF_HASH(tp_dns_v4, __u32, __u8, 64);
BPF_HASH(tp_dns_v6, struct tp_lpm_v6, __u8, 64);

/* Why: the proxy's connections to its own instance IP go to the inbound port, and tc only
 * redirects inbound traffic addressed to these. v6 keys use tp_lpm_v6 with prefixlen 128. */
BPF_HASH(tp_instance_v4, __u32, __u8, 64);
BPF_HASH(tp_instance_v6, struct tp_lpm_v6, __u8, 64);

/* Why: connect/sendmsg rewrite the destination before the socket has a local port, so the
 * original destination can only be keyed by socket cookie; getpeername and recvmsg read it
 * back. LRU so that sockets closed without a TCP state callback (UDP) age out. */
BPF_TABLE("lru_hash", __u64, struct tp_orig, tp_cookie_orig, 65536);

/* Why: the proxy's accepted socket has a different cookie from the app's; sockops copies the
 * original destination to the 4-tuple (seen from the proxy socket) that getsockopt can build. */
BPF_TABLE("lru_hash", struct tp_tuple, struct tp_orig, tp_tuple_orig, 65536);

/* BPF_SOCKHASH(name, key type, size) as BCC 0.20+ defines it. BCC 0.18 (Debian 11) has only
 * BPF_SOCKHASH(name, size) with a u32 key, though its rewriter already turns
 * map.sock_hash_update() and map.msg_redirect_hash() into helper calls; declaring the table
 * struct ourselves serves every BCC from 0.18 on. */
#define TP_SOCKHASH(_name, _key_type, _max_entries)				\
struct _name##_table_t {							\
	_key_type key;								\
	int leaf;								\
	int (*update)(_key_type *, int *);					\
	int (*delete)(_key_type *);						\
	int (*sock_hash_update)(void *, void *, __u64);				\
	int (*msg_redirect_hash)(void *, void *, __u64);			\
	__u32 max_entries;							\
};										\
__attribute__((section("maps/sockhash")))					\
struct _name##_table_t _name = { .max_entries = (_max_entries) };		\
BPF_ANNOTATE_KV_PAIR(_name, _key_type, int)

/* Why: tc rewrites the destination port of inbound SYNs; egress must restore the source port
 * and getsockopt must report the original port for the proxy's accepted socket. Value: the
 * original local port, host order. */
BPF_TABLE("lru_hash", struct tp_in_flow, __u16, tp_in_flows, 65536);

/* Why: sk_msg can only redirect to sockets held in a sockmap/sockhash; sockops adds both ends
 * of local app<->proxy connections, keyed by tuple seen from the socket itself. */
TP_SOCKHASH(tp_sock_hash, struct tp_tuple, 65536);

/* Why: tc ingress drops what it cannot redirect soundly (fragments, odd header chains);
 * per-CPU counters by TP_DROP_* reason let status say how many and why. */
BPF_PERCPU_ARRAY(tp_drops, __u64, TP_DROP_REASONS);

/* Why: read only by user space; records where we attached so uninstall needs no state file. */
BPF_ARRAY(tp_install_meta, struct tp_install_meta, 1);

#endif
