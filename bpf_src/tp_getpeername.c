/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cgroup/getpeername4/6 (kernel 5.8+): the app's getpeername() returns the address it
 * connected to, not the proxy's, so it cannot tell it was redirected.
 */
#include "tp_helpers.h"

int tp_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct tp_orig *orig = tp_cookie_orig.lookup(&cookie);

	if (!orig || orig->family != AF_INET)
		return 1;
	ctx->user_ip4 = orig->addr[0];
	ctx->user_port = orig->port;
	return 1;
}

int tp_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct tp_orig *orig = tp_cookie_orig.lookup(&cookie);

	if (!orig)
		return 1;
	if (orig->family == AF_INET) {
		/* an IPv6 socket that connected to ::ffff:a.b.c.d */
		__u32 mapped[4] = { 0, 0, bpf_htonl(0x0000ffff), orig->addr[0] };

		TP_CTX_SET_IP6(ctx, struct bpf_sock_addr, user_ip6, mapped);
	} else {
		TP_CTX_SET_IP6(ctx, struct bpf_sock_addr, user_ip6, orig->addr);
	}
	ctx->user_port = orig->port;
	return 1;
}
