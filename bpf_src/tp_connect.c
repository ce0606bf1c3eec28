/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cgroup/connect4 and cgroup/connect6: outbound TCP goes to the proxy's outbound port (the
 * proxy's own connections to its instance IP to the inbound port); connected UDP to port 53
 * goes to the DNS proxy. The original destination is kept by socket cookie for sockops,
 * getpeername and recvmsg.
 */
#include "tp_redirect.h"

int tp_sock4_connect(struct bpf_sock_addr *ctx)
{
	struct tp_settings *s = tp_get_settings();
	__u32 dst = ctx->user_ip4;
	__u16 port_be = (__u16)ctx->user_port;
	__u16 port = bpf_ntohs(port_be);
	__u32 uid = tp_uid();
	struct bpf_sock *sk = ctx->sk;
	__u16 target;

	if (!s)
		return 1;
	if (ctx->type == TP_SOCK_DGRAM) {
		if (tp_dns_redirect_v4(s, dst, port, uid))
			tp_to_proxy_v4(ctx, dst, port_be, s->dns_port);
		return 1;
	}
	if (ctx->type != TP_SOCK_STREAM || !sk)
		return 1;
	target = tp_tcp_target_v4(s, dst, port, uid, TP_CTX_U32(sk, struct bpf_sock, src_ip4));
	if (target)
		tp_to_proxy_v4(ctx, dst, port_be, target);
	return 1;
}

int tp_sock6_connect(struct bpf_sock_addr *ctx)
{
	struct tp_settings *s = tp_get_settings();
	__u32 dst[4];
	__u16 port_be = (__u16)ctx->user_port;
	__u16 port = bpf_ntohs(port_be);
	__u32 uid = tp_uid();
	struct bpf_sock *sk = ctx->sk;
	__u16 target;

	if (!s || !sk)
		return 1;
	tp_user_ip6(ctx, dst);

	if (tp_is_v4mapped(dst)) {
		/* An IPv6 socket talking IPv4 follows the IPv4 rules; the proxy's 127.0.0.1
		 * listener is reached through ::ffff:127.0.0.1. */
		if (ctx->type == TP_SOCK_DGRAM) {
			if (!tp_dns_redirect_v4(s, dst[3], port, uid))
				return 1;
			target = s->dns_port;
		} else if (ctx->type == TP_SOCK_STREAM) {
			target = tp_tcp_target_v4(s, dst[3], port, uid, TP_CTX_U32(sk, struct bpf_sock, src_ip6[3]));
		} else {
			return 1;
		}
		if (target)
			tp_to_proxy_v4mapped(ctx, dst[3], port_be, target);
		return 1;
	}

	if (ctx->type == TP_SOCK_DGRAM) {
		if (!tp_dns_redirect_v6(s, dst, port, uid))
			return 1;
		target = s->dns_port;
	} else if (ctx->type == TP_SOCK_STREAM) {
		__u32 src[4];

		TP_CTX_IP6(sk, struct bpf_sock, src_ip6, src);
		target = tp_tcp_target_v6(s, dst, port, uid, src);
	} else {
		return 1;
	}
	if (target)
		tp_to_proxy_v6(ctx, dst, port_be, target);
	return 1;
}
