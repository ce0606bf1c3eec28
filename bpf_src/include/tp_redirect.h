/* SPDX-License-Identifier: GPL-2.0 */
/* The redirect decisions of the contract (docs/architecture.md §1), shared by connect and sendmsg. */
#ifndef TP_REDIRECT_H
#define TP_REDIRECT_H

#include "tp_helpers.h"

static __always_inline void tp_remember_v4(void *ctx, __u32 addr_be, __u16 port_be)
{
	struct tp_orig orig = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);

	orig.addr[0] = addr_be;
	orig.port = port_be;
	orig.family = AF_INET;
	tp_cookie_orig.update(&cookie, &orig);
}

static __always_inline void tp_remember_v6(void *ctx, const __u32 *a, __u16 port_be)
{
	struct tp_orig orig = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);

	orig.addr[0] = a[0];
	orig.addr[1] = a[1];
	orig.addr[2] = a[2];
	orig.addr[3] = a[3];
	orig.port = port_be;
	orig.family = AF_INET6;
	tp_cookie_orig.update(&cookie, &orig);
}

/* The socket's destination address as the app gave it (IPv6 hooks; ::ffff:a.b.c.d for IPv4). */
static __always_inline void tp_user_ip6(const struct bpf_sock_addr *ctx, __u32 *dst)
{
	TP_CTX_IP6(ctx, struct bpf_sock_addr, user_ip6, dst);
}

/*
 * Send the socket to the proxy's local `target` port instead, remembering by cookie where it
 * was going (for sockops, getsockopt, getpeername and recvmsg).
 */
static __always_inline void tp_to_proxy_v4(struct bpf_sock_addr *ctx, __u32 dst_be, __u16 port_be,
					   __u16 target)
{
	tp_remember_v4(ctx, dst_be, port_be);
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(target);
}

/* An IPv6 socket talking IPv4: the proxy's 127.0.0.1 listener is reached as ::ffff:127.0.0.1. */
static __always_inline void tp_to_proxy_v4mapped(struct bpf_sock_addr *ctx, __u32 dst_be, __u16 port_be,
						 __u16 target)
{
	tp_remember_v4(ctx, dst_be, port_be);
	TP_CTX_SET_U32(ctx, struct bpf_sock_addr, user_ip6[3], bpf_htonl(0x7f000001));
	ctx->user_port = bpf_htons(target);
}

static __always_inline void tp_to_proxy_v6(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 port_be,
					   __u16 target)
{
	tp_remember_v6(ctx, dst, port_be);
	__u32 localhost[4] = { 0, 0, 0, bpf_htonl(1) };

	TP_CTX_SET_IP6(ctx, struct bpf_sock_addr, user_ip6, localhost);
	ctx->user_port = bpf_htons(target);
}

/*
 * TCP to dst:port (IPv4) from uid, socket bound to src: returns the local port to send it to,
 * or 0 to leave it alone. Order follows Kuma's KUMA_MESH_OUTBOUND chain.
 */
static __always_inline __u16 tp_tcp_target_v4(struct tp_settings *s, __u32 dst, __u16 port,
					       __u32 uid, __u32 src)
{
	if (src == bpf_htonl(TP_PASSTHROUGH_SRC_V4))
		return 0;
	if (tp_is_loopback_v4(dst))
		return 0;
	if (uid == s->proxy_uid)
		return (s->redirect_inbound && tp_is_instance_v4(dst)) ? s->inbound_port : 0;
	/* app -> its own address goes over lo, which Kuma leaves alone for non-proxy uids */
	if (tp_is_instance_v4(dst))
		return 0;
	if (tp_excl_out_ports.lookup(&port))
		return 0;
	if (tp_excluded_out_v4(dst))
		return 0;
	if (tp_uid_port_excluded(s, uid, port, TP_PROTO_TCP))
		return 0;
	return s->outbound_port;
}

/* ::6 is the IPv6 twin of 127.0.0.6 (Kuma's inbound passthrough source). */
static __always_inline __u16 tp_tcp_target_v6(struct tp_settings *s, const __u32 *dst, __u16 port,
					       __u32 uid, const __u32 *src)
{
	if (src[0] == 0 && src[1] == 0 && src[2] == 0 && src[3] == bpf_htonl(6))
		return 0;
	if (tp_is_loopback_v6(dst))
		return 0;
	if (uid == s->proxy_uid)
		return (s->redirect_inbound && tp_is_instance_v6(dst)) ? s->inbound_port : 0;
	if (!s->ipv6)
		return 0;
	if (tp_is_instance_v6(dst))
		return 0;
	if (tp_excl_out_ports.lookup(&port))
		return 0;
	if (tp_excluded_out_v6(dst))
		return 0;
	if (tp_uid_port_excluded(s, uid, port, TP_PROTO_TCP))
		return 0;
	return s->outbound_port;
}

/* UDP to dst:53: 1 when the DNS query goes to the local DNS proxy. */
static __always_inline int tp_dns_redirect_v4(struct tp_settings *s, __u32 dst, __u16 port, __u32 uid)
{
	if (port != TP_DNS_PORT || uid == s->proxy_uid || s->redirect_dns == TP_DNS_OFF)
		return 0;
	if (tp_uid_port_excluded(s, uid, port, TP_PROTO_UDP))
		return 0;
	if (s->redirect_dns == TP_DNS_ALL)
		return 1;
	return tp_dns_v4.lookup(&dst) != NULL;
}

static __always_inline int tp_dns_redirect_v6(struct tp_settings *s, const __u32 *dst, __u16 port,
					      __u32 uid)
{
	struct tp_lpm_v6 key = { .prefixlen = 128 };

	if (port != TP_DNS_PORT || uid == s->proxy_uid || s->redirect_dns == TP_DNS_OFF || !s->ipv6)
		return 0;
	if (tp_uid_port_excluded(s, uid, port, TP_PROTO_UDP))
		return 0;
	if (s->redirect_dns == TP_DNS_ALL)
		return 1;
	__builtin_memcpy(key.addr, dst, 16);
	return tp_dns_v6.lookup(&key) != NULL;
}

#endif
