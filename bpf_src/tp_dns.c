/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cgroup/sendmsg4/6 and cgroup/recvmsg4/6: unconnected UDP queries to port 53 go to the local
 * DNS proxy; replies from it are shown to the app as coming from the server it asked.
 * Connected UDP is handled by connect4/6, which share the cookie map.
 */
#include "tp_redirect.h"

int tp_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	struct tp_settings *s = tp_get_settings();
	__u32 dst = ctx->user_ip4;
	__u16 port_be = (__u16)ctx->user_port;

	if (!s || ctx->type != TP_SOCK_DGRAM)
		return 1;
	if (tp_dns_redirect_v4(s, dst, bpf_ntohs(port_be), tp_uid()))
		tp_to_proxy_v4(ctx, dst, port_be, s->dns_port);
	return 1;
}

int tp_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	struct tp_settings *s = tp_get_settings();
	__u32 dst[4];
	__u16 port_be = (__u16)ctx->user_port;
	__u16 port = bpf_ntohs(port_be);
	__u32 uid = tp_uid();

	if (!s || ctx->type != TP_SOCK_DGRAM)
		return 1;
	tp_user_ip6(ctx, dst);
	if (tp_is_v4mapped(dst)) {
		if (tp_dns_redirect_v4(s, dst[3], port, uid))
			tp_to_proxy_v4mapped(ctx, dst[3], port_be, s->dns_port);
	} else if (tp_dns_redirect_v6(s, dst, port, uid)) {
		tp_to_proxy_v6(ctx, dst, port_be, s->dns_port);
	}
	return 1;
}

int tp_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	struct tp_settings *s = tp_get_settings();
	__u64 cookie;
	struct tp_orig *orig;

	if (!s || ctx->user_ip4 != bpf_htonl(0x7f000001) ||
	    (__u16)ctx->user_port != bpf_htons(s->dns_port))
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	orig = tp_cookie_orig.lookup(&cookie);
	if (!orig || orig->family != AF_INET)
		return 1;
	ctx->user_ip4 = orig->addr[0];
	ctx->user_port = orig->port;
	return 1;
}

int tp_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	struct tp_settings *s = tp_get_settings();
	__u64 cookie;
	struct tp_orig *orig;
	__u32 src[4];

	if (!s || (__u16)ctx->user_port != bpf_htons(s->dns_port))
		return 1;
	tp_user_ip6(ctx, src);
	cookie = bpf_get_socket_cookie(ctx);
	orig = tp_cookie_orig.lookup(&cookie);
	if (!orig)
		return 1;
	if (tp_is_v4mapped(src) && src[3] == bpf_htonl(0x7f000001) && orig->family == AF_INET) {
		TP_CTX_SET_U32(ctx, struct bpf_sock_addr, user_ip6[3], orig->addr[0]);
	} else if (tp_is_loopback_v6(src) && orig->family == AF_INET6) {
		TP_CTX_SET_IP6(ctx, struct bpf_sock_addr, user_ip6, orig->addr);
	} else {
		return 1;
	}
	ctx->user_port = orig->port;
	return 1;
}
