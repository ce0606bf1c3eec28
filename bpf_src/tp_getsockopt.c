/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) and
 * getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) on the proxy's accepted sockets, which conntrack
 * answers under iptables. Every other option passes through untouched.
 */
#include "tp_helpers.h"

#define TP_SOL_IP 0
#define TP_SOL_IPV6 41
#define TP_SO_ORIGINAL_DST 80	/* == IP6T_SO_ORIGINAL_DST */
/* Kernel doc prog_cgroup_sockopt, "Large optval": the program sees at most PAGE_SIZE bytes and
 * must set optlen to 0 for larger buffers or the caller gets EFAULT. 4096 is the smallest page
 * size, so larger pages are handled too (setting 0 only means "keep the kernel's answer"). */
#define TP_PAGE_SIZE 4096

struct tp_sockaddr_in {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct tp_sockaddr_in6 {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

/* The accepted socket's tuple: bpf_sock has src = local (port host order), dst = remote. */
static __always_inline int tp_sockopt_tuple(struct bpf_sock *sk, struct tp_tuple *t)
{
	t->local_port = (__u16)sk->src_port;
	t->remote_port = bpf_ntohs(sk->dst_port);
	if (sk->family == AF_INET) {
		t->family = AF_INET;
		t->local[0] = TP_CTX_U32(sk, struct bpf_sock, src_ip4);
		t->remote[0] = TP_CTX_U32(sk, struct bpf_sock, dst_ip4);
		return 0;
	}
	if (sk->family != AF_INET6)
		return -1;
	t->family = AF_INET6;
	TP_CTX_IP6(sk, struct bpf_sock, src_ip6, t->local);
	TP_CTX_IP6(sk, struct bpf_sock, dst_ip6, t->remote);
	return 0;
}

/* Original destination of this connection: redirected outbound first, then inbound via tc. */
static __always_inline int tp_lookup_orig(struct tp_tuple *t, struct tp_orig *out)
{
	struct tp_orig *o = tp_tuple_orig.lookup(t);
	struct tp_in_flow flow = {};
	__u16 *port;

	if (o) {
		__builtin_memcpy(out, o, sizeof(*out));
		return 0;
	}
	__builtin_memcpy(flow.remote, t->remote, 16);
	__builtin_memcpy(flow.local, t->local, 16);
	flow.remote_port = t->remote_port;
	flow.family = t->family;
	port = tp_in_flows.lookup(&flow);
	if (!port)
		return -1;
	__builtin_memcpy(out->addr, t->local, 16);
	out->port = bpf_htons(*port);
	out->family = t->family;
	return 0;
}

/* optlen and retval are adjacent s32 fields; the barrier stops clang from merging the two
 * stores into one 8-byte store, which the verifier rejects as an invalid context access. */
static __always_inline void tp_sockopt_answer(struct bpf_sockopt *ctx, int len)
{
	ctx->optlen = len;
	asm volatile("" ::: "memory");
	ctx->retval = 0;
}

int tp_getsockopt(struct bpf_sockopt *ctx)
{
	struct tp_tuple t = {};
	struct tp_orig orig = {};
	void *optval = ctx->optval;
	void *optval_end = ctx->optval_end;
	struct bpf_sock *sk = ctx->sk;

	if (ctx->optname != TP_SO_ORIGINAL_DST ||
	    (ctx->level != TP_SOL_IP && ctx->level != TP_SOL_IPV6)) {
		if (ctx->optlen > TP_PAGE_SIZE)
			ctx->optlen = 0;
		return 1;
	}
	if (!sk || tp_sockopt_tuple(sk, &t) || tp_lookup_orig(&t, &orig))
		return 1;

	if (ctx->level == TP_SOL_IP && orig.family == AF_INET) {
		struct tp_sockaddr_in *sin = optval;

		if (optval + sizeof(*sin) > optval_end)
			return 1;
		sin->family = AF_INET;
		sin->port = orig.port;
		sin->addr = orig.addr[0];
		__builtin_memset(sin->zero, 0, sizeof(sin->zero));
		tp_sockopt_answer(ctx, sizeof(*sin));
	} else if (ctx->level == TP_SOL_IPV6 && orig.family == AF_INET6) {
		struct tp_sockaddr_in6 *sin6 = optval;

		if (optval + sizeof(*sin6) > optval_end)
			return 1;
		sin6->family = AF_INET6;
		sin6->port = orig.port;
		sin6->flowinfo = 0;
		sin6->addr[0] = orig.addr[0];
		sin6->addr[1] = orig.addr[1];
		sin6->addr[2] = orig.addr[2];
		sin6->addr[3] = orig.addr[3];
		sin6->scope_id = 0;
		tp_sockopt_answer(ctx, sizeof(*sin6));
	}
	return 1;
}
