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
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = orig->addr[0];
	} else {
		ctx->user_ip6[0] = orig->addr[0];
		ctx->user_ip6[1] = orig->addr[1];
		ctx->user_ip6[2] = orig->addr[2];
		ctx->user_ip6[3] = orig->addr[3];
	}
	ctx->user_port = orig->port;
	return 1;
}
