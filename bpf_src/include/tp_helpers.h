/* SPDX-License-Identifier: GPL-2.0 */
/* Small inline helpers shared by the hook files. They return 0/1 or -errno; only entry points
 * turn results into verdicts. */
#ifndef TP_HELPERS_H
#define TP_HELPERS_H

#include <uapi/linux/in.h>
#include <uapi/linux/socket.h>
#include "tp_ctx.h"
#include "tp_maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define TP_SOCK_STREAM 1
#define TP_SOCK_DGRAM 2
#define TP_PROTO_TCP 6
#define TP_PROTO_UDP 17
#define TP_DNS_PORT 53

/* 127.0.0.6: the source Kuma's inbound passthrough binds; such connections are never redirected. */
#define TP_PASSTHROUGH_SRC_V4 0x7f000006

static __always_inline struct tp_settings *tp_get_settings(void)
{
	int zero = 0;
	return tp_settings.lookup(&zero);
}

static __always_inline int tp_is_loopback_v4(__u32 addr_be)
{
	return (bpf_ntohl(addr_be) >> 24) == 127;
}

static __always_inline int tp_is_loopback_v6(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/* ::ffff:a.b.c.d — an IPv6 socket talking IPv4 (RFC 4291 §2.5.5.2). */
static __always_inline int tp_is_v4mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* One helper per trie: BCC resolves a map only where its name is written, so a map can be
 * passed neither to a function nor through a macro. */
static __always_inline int tp_excluded_out_v4(__u32 addr_be)
{
	struct tp_lpm_v4 key = { .prefixlen = 32 };
	__builtin_memcpy(key.addr, &addr_be, 4);
	return tp_excl_out_v4.lookup(&key) != NULL;
}

static __always_inline int tp_excluded_out_v6(const __u32 *a)
{
	struct tp_lpm_v6 key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, a, 16);
	return tp_excl_out_v6.lookup(&key) != NULL;
}

static __always_inline int tp_excluded_in_v4(__u32 addr_be)
{
	struct tp_lpm_v4 key = { .prefixlen = 32 };
	__builtin_memcpy(key.addr, &addr_be, 4);
	return tp_excl_in_v4.lookup(&key) != NULL;
}

static __always_inline int tp_excluded_in_v6(const __u32 *a)
{
	struct tp_lpm_v6 key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, a, 16);
	return tp_excl_in_v6.lookup(&key) != NULL;
}

static __always_inline int tp_is_instance_v4(__u32 addr_be)
{
	return tp_instance_v4.lookup(&addr_be) != NULL;
}

static __always_inline int tp_is_instance_v6(const __u32 *a)
{
	struct tp_lpm_v6 key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, a, 16);
	return tp_instance_v6.lookup(&key) != NULL;
}

/* --exclude-outbound-ports-for-uids: bounded scan over at most TP_MAX_UID_RANGES entries. */
static __always_inline int tp_uid_port_excluded(struct tp_settings *s, __u32 uid, __u16 port, __u8 proto)
{
	int i;
#pragma unroll
	for (i = 0; i < TP_MAX_UID_RANGES; i++) {
		int idx = i;
		struct tp_uid_port_range *r;
		if (i >= s->uid_range_count)
			break;
		r = tp_uid_port_excl.lookup(&idx);
		if (!r)
			break;
		if (r->proto == proto && uid >= r->uid_lo && uid <= r->uid_hi &&
		    port >= r->port_lo && port <= r->port_hi)
			return 1;
	}
	return 0;
}

static __always_inline __u32 tp_uid(void)
{
	return (__u32)bpf_get_current_uid_gid();
}

#endif
