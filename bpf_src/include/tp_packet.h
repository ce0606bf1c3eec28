/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Finding the TCP header of a packet at tc, whatever comes before it (docs/ebpf-packets.md).
 * tc runs before the kernel reassembles fragments or walks IPv6 extension headers, so the
 * parser must either find the very TCP header the socket layer will see, or say the packet is
 * suspect; the entry point then drops it if it is addressed where a plain packet would be
 * redirected. Every read is bpf_skb_load_bytes into the stack at an offset computed from
 * header fields (no pointer arithmetic on ctx), and the extension-header walk is unrolled with a
 * small constant bound, so the verifier of every supported kernel accepts it.
 */
#ifndef TP_PACKET_H
#define TP_PACKET_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include "tp_helpers.h"

#define TP_IP_MF_OFFSET 0x3fff		/* IPv4 more-fragments flag and fragment offset */
#define TP_IP6_OFFSET_MF 0xfff9		/* IPv6 fragment offset and more-fragments flag */
#define TP_V6_MAX_EXT 6			/* extension headers walked before giving up (dropped) */

#define TP_NEXTHDR_HOP 0
#define TP_NEXTHDR_ROUTING 43
#define TP_NEXTHDR_FRAGMENT 44
#define TP_NEXTHDR_AUTH 51
#define TP_NEXTHDR_DEST 60

#define TP_PKT_TCP 0		/* l4 holds the TCP header's offset, ports and flags */
#define TP_PKT_PASS 1		/* not TCP, or not IP: none of our business */
#define TP_PKT_SUSPECT 2	/* may become TCP to a local port that tc cannot see: l4->drop_reason */

struct tp_l4 {
	__u32 off;		/* TCP header offset in the packet */
	struct tp_in_flow flow;	/* remote = the other host, local = us */
	__u16 sport;		/* host order */
	__u16 dport;
	__u8 flags;
	__u8 drop_reason;	/* TP_DROP_*, for TP_PKT_SUSPECT */
};

static __always_inline int tp_suspect(struct tp_l4 *l4, __u8 reason)
{
	l4->drop_reason = reason;
	return TP_PKT_SUSPECT;
}

static __always_inline int tp_is_v6_ext(__u8 nexthdr)
{
	return nexthdr == TP_NEXTHDR_HOP || nexthdr == TP_NEXTHDR_ROUTING ||
	       nexthdr == TP_NEXTHDR_FRAGMENT || nexthdr == TP_NEXTHDR_AUTH ||
	       nexthdr == TP_NEXTHDR_DEST;
}

static __always_inline int tp_may_hold_tcp(__u8 nexthdr)
{
	return nexthdr == TP_PROTO_TCP || tp_is_v6_ext(nexthdr);
}

/* IPv4 at byte l2: fragments of TCP are suspect (the ports may be in another fragment, or in
 * an overlapping one the kernel will prefer), the rest is TCP at ihl * 4 or not ours. */
static __always_inline int tp_parse_v4(struct __sk_buff *skb, __u32 l2, int dir_ingress,
				       struct tp_l4 *l4)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, l2, &ip, sizeof(ip)))
		return TP_PKT_PASS;	/* no whole IP header: the kernel drops it */
	l4->flow.family = AF_INET;
	l4->flow.remote[0] = dir_ingress ? ip.saddr : ip.daddr;
	l4->flow.local[0] = dir_ingress ? ip.daddr : ip.saddr;
	if (ip.protocol != TP_PROTO_TCP)
		return TP_PKT_PASS;
	if (ip.frag_off & bpf_htons(TP_IP_MF_OFFSET))
		return tp_suspect(l4, TP_DROP_V4_FRAGMENT);
	if (ip.ihl < 5)
		return tp_suspect(l4, TP_DROP_HEADER_CHAIN);
	l4->off = l2 + ip.ihl * 4;
	return TP_PKT_TCP;
}

/* IPv6 at byte l2: walk Hop-by-Hop, Routing, Destination Options, AH and Fragment headers to
 * TCP. A real fragment that may hold TCP, a chain longer than TP_V6_MAX_EXT or cut short, and
 * TCP that a Routing header sends on elsewhere are suspect. */
static __always_inline int tp_parse_v6(struct __sk_buff *skb, __u32 l2, int dir_ingress,
				       struct tp_l4 *l4)
{
	struct ipv6hdr ip6;
	__u8 ext[4];	/* next header, length, and (Routing) type, segments left */
	__u32 off = l2 + sizeof(ip6);
	__u8 nexthdr;
	int routed = 0;

	if (bpf_skb_load_bytes(skb, l2, &ip6, sizeof(ip6)))
		return TP_PKT_PASS;
	l4->flow.family = AF_INET6;
	if (dir_ingress) {
		__builtin_memcpy(l4->flow.remote, &ip6.saddr, 16);
		__builtin_memcpy(l4->flow.local, &ip6.daddr, 16);
	} else {
		__builtin_memcpy(l4->flow.remote, &ip6.daddr, 16);
		__builtin_memcpy(l4->flow.local, &ip6.saddr, 16);
	}
	nexthdr = ip6.nexthdr;
#pragma unroll
	for (int i = 0; i < TP_V6_MAX_EXT; i++) {
		if (!tp_is_v6_ext(nexthdr))
			break;
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
			return tp_suspect(l4, TP_DROP_HEADER_CHAIN);
		if (nexthdr == TP_NEXTHDR_FRAGMENT) {
			__u16 frag = ((__u16)ext[2] << 8) | ext[3];

			/* offset 0 without more fragments is an atomic fragment: a whole packet */
			if ((frag & TP_IP6_OFFSET_MF) && tp_may_hold_tcp(ext[0]))
				return tp_suspect(l4, TP_DROP_V6_FRAGMENT);
			if (frag & TP_IP6_OFFSET_MF)
				return TP_PKT_PASS;
			off += 8;
		} else if (nexthdr == TP_NEXTHDR_AUTH) {
			off += ((__u32)ext[1] + 2) * 4;
		} else {
			if (nexthdr == TP_NEXTHDR_ROUTING && ext[3])
				routed = 1;
			off += ((__u32)ext[1] + 1) * 8;
		}
		nexthdr = ext[0];
	}
	if (nexthdr != TP_PROTO_TCP)
		return tp_is_v6_ext(nexthdr) ? tp_suspect(l4, TP_DROP_HEADER_CHAIN) : TP_PKT_PASS;
	if (routed)
		return tp_suspect(l4, TP_DROP_V6_ROUTED);
	l4->off = off;
	return TP_PKT_TCP;
}

/* dir_ingress: 1 when the packet comes to us (remote = source); l2: bytes before the IP header. */
static __always_inline int tp_parse(struct __sk_buff *skb, __u32 l2, int dir_ingress,
				    struct tp_l4 *l4)
{
	__u16 ports[2];
	__u8 flags;
	int verdict;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		verdict = tp_parse_v4(skb, l2, dir_ingress, l4);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		verdict = tp_parse_v6(skb, l2, dir_ingress, l4);
	else
		return TP_PKT_PASS;
	if (verdict != TP_PKT_TCP)
		return verdict;
	if (bpf_skb_load_bytes(skb, l4->off, ports, sizeof(ports)) ||
	    bpf_skb_load_bytes(skb, l4->off + 13, &flags, 1))
		return tp_suspect(l4, TP_DROP_HEADER_CHAIN);
	l4->sport = bpf_ntohs(ports[0]);
	l4->dport = bpf_ntohs(ports[1]);
	l4->flags = flags;
	l4->flow.remote_port = dir_ingress ? l4->sport : l4->dport;
	return TP_PKT_TCP;
}

#endif
