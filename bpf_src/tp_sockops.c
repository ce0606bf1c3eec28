/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sockops: when an app's redirected connection is established, copy its original destination
 * from the cookie map to the 4-tuple the proxy's accepted socket will see, so getsockopt can
 * answer SO_ORIGINAL_DST there; add local connections to the sockhash for sk_msg. The
 * 4-tuple entry is forgotten when the proxy's socket closes, not the app's: a client that sends
 * and closes before a busy proxy accepts must still have its original destination found.
 */
#include "tp_helpers.h"

#ifndef BPF_SOCK_OPS_STATE_CB_FLAG
#define BPF_SOCK_OPS_STATE_CB_FLAG (1 << 2)
#endif

/* The tuple as seen from the socket running this callback; IPv4-mapped IPv6 folded to IPv4
 * so that an IPv6 app socket and the proxy's IPv4 socket agree on the key. */
static __always_inline void tp_skops_tuple(struct bpf_sock_ops *skops, struct tp_tuple *t)
{
	t->local_port = (__u16)skops->local_port;
	/* remote_port holds the network-order port in its upper half on little endian */
	t->remote_port = (__u16)bpf_ntohl(skops->remote_port);
	if (skops->family == AF_INET) {
		t->family = AF_INET;
		t->local[0] = TP_CTX_U32(skops, struct bpf_sock_ops, local_ip4);
		t->remote[0] = TP_CTX_U32(skops, struct bpf_sock_ops, remote_ip4);
		return;
	}
	TP_CTX_IP6(skops, struct bpf_sock_ops, local_ip6, t->local);
	TP_CTX_IP6(skops, struct bpf_sock_ops, remote_ip6, t->remote);
	t->family = AF_INET6;
	if (tp_is_v4mapped(t->local) && tp_is_v4mapped(t->remote)) {
		t->local[0] = t->local[3];
		t->remote[0] = t->remote[3];
		t->local[1] = t->local[2] = t->local[3] = 0;
		t->remote[1] = t->remote[2] = t->remote[3] = 0;
		t->family = AF_INET;
	}
}

static __always_inline void tp_tuple_reverse(const struct tp_tuple *t, struct tp_tuple *r)
{
	r->family = t->family;
	r->local_port = t->remote_port;
	r->remote_port = t->local_port;
	__builtin_memcpy(r->local, t->remote, 16);
	__builtin_memcpy(r->remote, t->local, 16);
}

/* Both ends on this host: loopback, or talking to one of our instance addresses. */
static __always_inline int tp_tuple_is_local(const struct tp_tuple *t)
{
	if (t->family == AF_INET)
		return (tp_is_loopback_v4(t->local[0]) && tp_is_loopback_v4(t->remote[0])) ||
		       tp_is_instance_v4(t->remote[0]);
	return (tp_is_loopback_v6(t->local) && tp_is_loopback_v6(t->remote)) ||
	       tp_is_instance_v6(t->remote);
}

int tp_sockops(struct bpf_sock_ops *skops)
{
	struct tp_settings *s = tp_get_settings();
	struct tp_tuple t = {};
	struct tp_tuple peer = {};
	struct tp_orig *orig;
	__u64 cookie;
	__u32 op = skops->op;

	if (!s)
		return 1;
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;

	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		tp_skops_tuple(skops, &t);
		cookie = bpf_get_socket_cookie(skops);
		orig = tp_cookie_orig.lookup(&cookie);
		if (orig) {
			/* keyed as the proxy's accepted socket sees it: the reverse of ours */
			tp_tuple_reverse(&t, &peer);
			tp_tuple_orig.update(&peer, orig);
			/* for the cookie entry only; the tuple entry belongs to the proxy's socket */
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
		}
		if (s->accel && tp_tuple_is_local(&t))
			tp_sock_hash.sock_hash_update(skops, &t, BPF_ANY);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		tp_skops_tuple(skops, &t);
		/* the proxy accepted a redirected connection: its close forgets the tuple entry
		 * (the app's ACTIVE_ESTABLISHED ran first: it precedes the ACK that makes this one) */
		if (tp_tuple_orig.lookup(&t))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
		if (s->accel && tp_tuple_is_local(&t))
			tp_sock_hash.sock_hash_update(skops, &t, BPF_ANY);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[1] is the new state; 7 is TCP_CLOSE (include/net/tcp_states.h) */
		if (skops->args[1] != 7)
			break;
		/* the proxy's socket: its own tuple is the key; the app's: no tuple entry has its
		 * view as key, so deleting is a no-op there. LRU ages out what no close reaches. */
		tp_skops_tuple(skops, &t);
		tp_tuple_orig.delete(&t);
		cookie = bpf_get_socket_cookie(skops);
		tp_cookie_orig.delete(&cookie);
		break;
	default:
		break;
	}
	return 1;
}
