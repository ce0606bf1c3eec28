/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Context and socket fields read at a constant offset, whatever the compiler makes of the C.
 *
 * The verifier rewrites every access to a context (bpf_sock_addr, bpf_sock_ops, sk_msg_md,
 * bpf_sockopt) or to a bpf_sock by its offset, so it accepts only loads of the form
 * *(u32 *)(ptr + K) with K a constant. Plain C compiles to that under LLVM 14, but LLVM 19
 * merges the IPv4 and IPv6 branches of a family switch into one load from
 * ptr + (v4 ? K4 : K6): "R2 pointer arithmetic on sock prohibited". The verifier judges the
 * code, not the C, so these reads are inline asm: one ldxw at its own offset, which no LLVM
 * (11 to 21 in the userland matrix) can merge, hoist or turn into pointer arithmetic.
 */
#ifndef TP_CTX_H
#define TP_CTX_H

#include <linux/types.h>

/* u32 field `field` of *ptr, whose type is `type` (a context or struct bpf_sock). */
#define TP_CTX_U32(ptr, type, field) ({						\
	__u64 __tp_v;								\
	asm volatile("%0 = *(u32 *)(%1 + %2)"					\
		     : "=r"(__tp_v)						\
		     : "r"(ptr), "i"(__builtin_offsetof(type, field)));		\
	(__u32)__tp_v;								\
})

/* An IPv6 address field (four u32 words, network order) of *ptr into out[4]. */
#define TP_CTX_IP6(ptr, type, field, out) do {					\
	(out)[0] = TP_CTX_U32(ptr, type, field[0]);				\
	(out)[1] = TP_CTX_U32(ptr, type, field[1]);				\
	(out)[2] = TP_CTX_U32(ptr, type, field[2]);				\
	(out)[3] = TP_CTX_U32(ptr, type, field[3]);				\
} while (0)

/* Store v into u32 field `field` of *ptr: the same guarantee for writes (user_ip6 is written
 * from several branches, which LLVM may merge into one store at a computed offset). */
#define TP_CTX_SET_U32(ptr, type, field, v) do {				\
	__u64 __tp_w = (__u32)(v);						\
	asm volatile("*(u32 *)(%0 + %1) = %2"					\
		     :: "r"(ptr), "i"(__builtin_offsetof(type, field)), "r"(__tp_w)	\
		     : "memory");						\
} while (0)

/* in[4] (network order words) into an IPv6 address field of *ptr. */
#define TP_CTX_SET_IP6(ptr, type, field, in) do {				\
	TP_CTX_SET_U32(ptr, type, field[0], (in)[0]);				\
	TP_CTX_SET_U32(ptr, type, field[1], (in)[1]);				\
	TP_CTX_SET_U32(ptr, type, field[2], (in)[2]);				\
	TP_CTX_SET_U32(ptr, type, field[3], (in)[3]);				\
} while (0)

#endif
