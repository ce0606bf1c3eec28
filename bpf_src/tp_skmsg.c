/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sk_msg on tp_sock_hash: data sent on one end of a local app<->proxy connection is put
 * straight into the other end's receive queue, skipping the loopback TCP/IP stack.
 */
#include "tp_helpers.h"

int tp_sk_msg(struct sk_msg_md *msg)
{
	struct tp_tuple peer = {};

	/* the peer's own view: its local end is our remote end */
	peer.local_port = (__u16)bpf_ntohl(msg->remote_port);
	peer.remote_port = (__u16)msg->local_port;
	if (msg->family == AF_INET) {
		peer.family = AF_INET;
		peer.local[0] = TP_CTX_U32(msg, struct sk_msg_md, remote_ip4);
		peer.remote[0] = TP_CTX_U32(msg, struct sk_msg_md, local_ip4);
	} else if (msg->family == AF_INET6) {
		peer.family = AF_INET6;
		TP_CTX_IP6(msg, struct sk_msg_md, remote_ip6, peer.local);
		TP_CTX_IP6(msg, struct sk_msg_md, local_ip6, peer.remote);
		if (tp_is_v4mapped(peer.local) && tp_is_v4mapped(peer.remote)) {
			peer.local[0] = peer.local[3];
			peer.remote[0] = peer.remote[3];
			peer.local[1] = peer.local[2] = peer.local[3] = 0;
			peer.remote[1] = peer.remote[2] = peer.remote[3] = 0;
			peer.family = AF_INET;
		}
	} else {
		return SK_PASS;
	}
	/* When the peer is not in the hash (yet, or acceleration is off) the helper returns
	 * SK_DROP without redirecting; passing keeps the normal TCP path instead of dropping. */
	tp_sock_hash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
	return SK_PASS;
}
