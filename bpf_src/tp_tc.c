/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tc ingress/egress on the mesh interface (direct-action): inbound TCP to an instance address
 * is sent to the proxy's inbound port by rewriting the destination port of its packets; the
 * proxy's replies get the original source port back. The flow is decided on the first SYN and
 * remembered in tp_in_flows, which getsockopt also reads for SO_ORIGINAL_DST.
 * Limits: IPv6 packets with extension headers before TCP are left alone.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>
#include "tp_helpers.h"

#define TP_TCP_SYN 0x02
#define TP_TCP_ACK 0x10
#define TP_IP_MF_OFFSET 0x3fff

struct tp_l4 {
	__u32 off;		/* TCP header offset in the packet */
	struct tp_in_flow flow;	/* remote = the other host, local = us */
	__u16 sport;		/* host order */
	__u16 dport;
	__u8 flags;
};

/* dir_ingress: 1 when the packet comes to us (remote = source). Returns 0 for TCP we parse. */
static __always_inline int tp_parse(struct __sk_buff *skb, int dir_ingress, struct tp_l4 *l4)
{
	__u16 ports[2];
	__u8 flags;
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		if (ip.protocol != TP_PROTO_TCP || (ip.frag_off & bpf_htons(TP_IP_MF_OFFSET)))
			return -1;
		off = ETH_HLEN + ip.ihl * 4;
		l4->flow.family = AF_INET;
		l4->flow.remote[0] = dir_ingress ? ip.saddr : ip.daddr;
		l4->flow.local[0] = dir_ingress ? ip.daddr : ip.saddr;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		if (ip6.nexthdr != TP_PROTO_TCP)
			return -1;
		off = ETH_HLEN + sizeof(ip6);
		l4->flow.family = AF_INET6;
		if (dir_ingress) {
			__builtin_memcpy(l4->flow.remote, &ip6.saddr, 16);
			__builtin_memcpy(l4->flow.local, &ip6.daddr, 16);
		} else {
			__builtin_memcpy(l4->flow.remote, &ip6.daddr, 16);
			__builtin_memcpy(l4->flow.local, &ip6.saddr, 16);
		}
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return -1;
	if (bpf_skb_load_bytes(skb, off + 13, &flags, 1))
		return -1;
	l4->off = off;
	l4->sport = bpf_ntohs(ports[0]);
	l4->dport = bpf_ntohs(ports[1]);
	l4->flags = flags;
	l4->flow.remote_port = dir_ingress ? l4->sport : l4->dport;
	return 0;
}

/* Replace the TCP port at byte offset port_off; a port is not in the pseudo-header. */
static __always_inline int tp_set_port(struct __sk_buff *skb, __u32 l4off, __u32 port_off,
				       __u16 old_port, __u16 new_port)
{
	__u16 old_be = bpf_htons(old_port);
	__u16 new_be = bpf_htons(new_port);

	if (bpf_l4_csum_replace(skb, l4off + offsetof(struct tcphdr, check), old_be, new_be,
				sizeof(__u16)))
		return -1;
	return bpf_skb_store_bytes(skb, l4off + port_off, &new_be, sizeof(new_be), 0);
}

static __always_inline int tp_inbound_wanted(struct tp_settings *s, struct tp_l4 *l4)
{
	if (!s->redirect_inbound || l4->dport == s->inbound_port)
		return 0;
	if (tp_excl_in_ports.lookup(&l4->dport))
		return 0;
	if (l4->flow.family == AF_INET) {
		if (!tp_is_instance_v4(l4->flow.local[0]))
			return 0;
		return !tp_excluded_in_v4(l4->flow.remote[0]);
	}
	if (!s->ipv6 || !tp_is_instance_v6(l4->flow.local))
		return 0;
	return !tp_excluded_in_v6(l4->flow.remote);
}

int tp_tc_ingress(struct __sk_buff *skb)
{
	struct tp_settings *s = tp_get_settings();
	struct tp_l4 l4 = {};
	__u16 *known;

	if (!s || tp_parse(skb, 1, &l4))
		return TC_ACT_OK;
	known = tp_in_flows.lookup(&l4.flow);
	if ((l4.flags & TP_TCP_SYN) && !(l4.flags & TP_TCP_ACK)) {
		if (!tp_inbound_wanted(s, &l4)) {
			/* a reused remote port must not inherit an old decision */
			if (known)
				tp_in_flows.delete(&l4.flow);
			return TC_ACT_OK;
		}
		tp_in_flows.update(&l4.flow, &l4.dport);
	} else if (!known || *known != l4.dport) {
		return TC_ACT_OK;
	}
	tp_set_port(skb, l4.off, offsetof(struct tcphdr, dest), l4.dport, s->inbound_port);
	return TC_ACT_OK;
}

int tp_tc_egress(struct __sk_buff *skb)
{
	struct tp_settings *s = tp_get_settings();
	struct tp_l4 l4 = {};
	__u16 *orig;

	if (!s || tp_parse(skb, 0, &l4) || l4.sport != s->inbound_port)
		return TC_ACT_OK;
	orig = tp_in_flows.lookup(&l4.flow);
	if (!orig)
		return TC_ACT_OK;
	tp_set_port(skb, l4.off, offsetof(struct tcphdr, source), l4.sport, *orig);
	return TC_ACT_OK;
}
