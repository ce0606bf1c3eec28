/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tc ingress/egress on the mesh interface (direct-action): inbound TCP to an instance address
 * is sent to the proxy's inbound port by rewriting the destination port of its packets; the
 * proxy's replies get the original source port back. The flow is decided on the first SYN and
 * remembered in tp_in_flows, which getsockopt also reads for SO_ORIGINAL_DST.
 * What tc cannot redirect soundly (TCP fragments, IPv6 header chains past the walk's bound,
 * source-routed TCP) is dropped and counted in tp_drops when a plain packet with the same
 * addresses would be redirected: nothing reaches an app's port past the proxy
 * (docs/ebpf-packets.md). The L2 header length comes from the interface's link type.
 */
#include <uapi/linux/pkt_cls.h>
#include "tp_packet.h"

#define TP_TCP_SYN 0x02
#define TP_TCP_ACK 0x10

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

/* Would a plain packet between these addresses be redirected (ports aside)? */
static __always_inline int tp_addresses_wanted(struct tp_settings *s, struct tp_l4 *l4)
{
	if (!s->redirect_inbound)
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

static __always_inline int tp_inbound_wanted(struct tp_settings *s, struct tp_l4 *l4)
{
	if (l4->dport == s->inbound_port || tp_excl_in_ports.lookup(&l4->dport))
		return 0;
	return tp_addresses_wanted(s, l4);
}

static __always_inline void tp_count_drop(__u8 reason)
{
	int key = reason;
	__u64 *count = tp_drops.lookup(&key);

	if (count)
		*count += 1;	/* per-CPU: no other writer */
}

int tp_tc_ingress(struct __sk_buff *skb)
{
	struct tp_settings *s = tp_get_settings();
	struct tp_l4 l4 = {};
	__u16 *known;
	int verdict;

	if (!s)
		return TC_ACT_OK;
	verdict = tp_parse(skb, s->l3_iface ? 0 : ETH_HLEN, 1, &l4);
	if (verdict == TP_PKT_PASS)
		return TC_ACT_OK;
	if (verdict == TP_PKT_SUSPECT) {
		if (!tp_addresses_wanted(s, &l4))
			return TC_ACT_OK;
		tp_count_drop(l4.drop_reason);
		return TC_ACT_SHOT;
	}
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

	/* egress never drops: only the proxy's replies are rewritten, and only when parsed */
	if (!s || tp_parse(skb, s->l3_iface ? 0 : ETH_HLEN, 0, &l4) != TP_PKT_TCP ||
	    l4.sport != s->inbound_port)
		return TC_ACT_OK;
	orig = tp_in_flows.lookup(&l4.flow);
	if (!orig)
		return TC_ACT_OK;
	tp_set_port(skb, l4.off, offsetof(struct tcphdr, source), l4.sport, *orig);
	return TC_ACT_OK;
}
