/* SPDX-License-Identifier: Apache-2.0
 *
 * Packet access of the XDP program (tc_nat.c's lb_xdp_ingress): the same
 * struct lb_pkt as lib/pkt.h, for the common shapes only, read and written
 * in place with direct packet access (no skb helpers at XDP). Everything
 * else is handed to the TC program untouched.
 *
 * The fast path: Ethernet, then IPv4 without options and not a fragment,
 * or IPv6 without extension headers, then TCP or UDP. IPv4 options (among
 * them DSR's), IPv6 extension headers, fragments, ICMP and non-IP frames
 * go to TC, which knows them all.
 *
 * Checksums are updated incrementally (RFC 1624), which is right for
 * frames that arrive with complete checksums: everything a NIC receives.
 * Frames a local socket sends over a veth may carry CHECKSUM_PARTIAL (the
 * L4 field holds the pseudo-header sum, not a checksum), which XDP cannot
 * see; such a frame is never checked on a veth path, and XDP belongs on
 * the node's uplinks (docs/north-south.md).
 */
#ifndef PYAGENT_LIB_XDP_PKT_H
#define PYAGENT_LIB_XDP_PKT_H

#include "lib/pkt.h"
#include <uapi/linux/udp.h>

#define LB_XDP_L4_V4 (ETH_HLEN + sizeof(struct iphdr))
#define LB_XDP_L4_V6 (ETH_HLEN + sizeof(struct ipv6hdr))

/* ~sum of the 16-bit words of old replaced by those of new, folded into
 * check: the incremental update HC' = ~(~HC + ~m + m') for n16 words. */
static __always_inline __u16 lb_csum_update(__u16 check, const __u16 *old, const __u16 *new,
					    int n16)
{
	__u32 s = (__u16)~check;

#pragma unroll
	for (int i = 0; i < n16; i++)
		s += (__u16)~old[i] + new[i];
	return lb_csum_fold(s);
}

/* The L4 checksum field of p at l4 (TCP +16, UDP +6), bounds checked. */
static __always_inline __u16 *lb_xdp_l4_check(void *l4, void *end, __u8 proto)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return 0;
		return &th->check;
	}
	struct udphdr *uh = l4;

	if ((void *)(uh + 1) > end)
		return 0;
	return &uh->check;
}

/* Update the L4 checksum for old -> new (n16 words of the pseudo header or
 * of the ports). A UDP checksum of 0 (none) stays 0; a result of 0 is sent
 * as 0xffff, as bpf_l4_csum_replace's BPF_F_MARK_MANGLED_0 does. */
static __always_inline void lb_xdp_l4_update(__u16 *check, __u8 proto, const __u16 *old,
					     const __u16 *new, int n16)
{
	__u16 c;

	if (proto == IPPROTO_UDP && *check == 0)
		return;
	c = lb_csum_update(*check, old, new, n16);
	if (proto == IPPROTO_UDP && c == 0)
		c = 0xffff;
	*check = c;
}

static __always_inline int lb_xdp_parse_l4(void *l4, void *end, struct lb_pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return LB_PKT_OTHER;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_seq = bpf_ntohl(th->seq);
		p->tcp_ack = bpf_ntohl(th->ack_seq);
		p->tcp_doff = th->doff * 4;
		p->tcp_flags = (th->fin ? LB_TCP_FIN : 0) | (th->syn ? LB_TCP_SYN : 0) |
			       (th->rst ? LB_TCP_RST : 0) | (th->ack ? LB_TCP_ACK : 0);
		return LB_PKT_L4;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return LB_PKT_OTHER;
		p->sport = uh->source;
		p->dport = uh->dest;
		return LB_PKT_L4;
	}
	return LB_PKT_OTHER;
}

/* LB_PKT_L4 for a fast-path frame, LB_PKT_OTHER for anything else (TC's). */
static __always_inline int lb_xdp_parse(struct xdp_md *ctx, struct lb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return LB_PKT_OTHER;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return LB_PKT_OTHER;
		if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(LB_IP_MF_OFF)))
			return LB_PKT_OTHER;
		p->l3_proto = ETH_P_IP;
		p->saddr.p32[0] = ip->saddr;
		p->daddr.p32[0] = ip->daddr;
		p->proto = ip->protocol;
		p->l4_off = LB_XDP_L4_V4;
		p->l4_len = bpf_ntohs(ip->tot_len) - sizeof(*ip);
		return lb_xdp_parse_l4(ip + 1, end, p);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return LB_PKT_OTHER;
		p->l3_proto = ETH_P_IPV6;
		__builtin_memcpy(p->saddr.addr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr.addr, &ip6->daddr, 16);
		p->proto = ip6->nexthdr;
		p->l4_off = LB_XDP_L4_V6;
		p->l4_len = bpf_ntohs(ip6->payload_len);
		return lb_xdp_parse_l4(ip6 + 1, end, p);
	}
	return LB_PKT_OTHER;
}

static __always_inline int lb_xdp_rewrite_port(__u16 *check, void *l4, struct lb_pkt *p, int src,
					       __be16 port)
{
	__be16 *field = (__be16 *)l4 + (src ? 0 : 1);  /* source, dest: the first two words */
	__be16 old = *field;

	if (old == port)
		return 0;
	lb_xdp_l4_update(check, p->proto, &old, &port, 1);
	*field = port;
	if (src)
		p->sport = port;
	else
		p->dport = port;
	return 0;
}

static __always_inline int lb4_xdp_rewrite(struct xdp_md *ctx, struct lb_pkt *p, int src,
					   __be32 addr, __be16 port)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	void *l4 = data + LB_XDP_L4_V4;
	__u16 *check;
	__be32 *field, old;

	if ((void *)(ip + 1) > end)
		return -1;
	check = lb_xdp_l4_check(l4, end, p->proto);
	if (!check)
		return -1;
	field = src ? &ip->saddr : &ip->daddr;
	old = *field;
	if (old != addr) {
		ip->check = lb_csum_update(ip->check, (__u16 *)&old, (__u16 *)&addr, 2);
		lb_xdp_l4_update(check, p->proto, (__u16 *)&old, (__u16 *)&addr, 2);
		*field = addr;
		if (src)
			p->saddr.p32[0] = addr;
		else
			p->daddr.p32[0] = addr;
	}
	return lb_xdp_rewrite_port(check, l4, p, src, port);
}

static __always_inline int lb6_xdp_rewrite(struct xdp_md *ctx, struct lb_pkt *p, int src,
					   const union lb_v6addr *addr, __be16 port)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	void *l4 = data + LB_XDP_L4_V6;
	union lb_v6addr old, new = *addr;
	__u16 *check;
	void *field;

	if ((void *)(ip6 + 1) > end)
		return -1;
	check = lb_xdp_l4_check(l4, end, p->proto);
	if (!check)
		return -1;
	field = src ? (void *)&ip6->saddr : (void *)&ip6->daddr;
	__builtin_memcpy(&old, field, 16);
	if (!lb6_addr_eq(&old, &new)) {
		/* no IPv6 header checksum: only the L4 pseudo header */
		lb_xdp_l4_update(check, p->proto, (__u16 *)old.addr, (__u16 *)new.addr, 8);
		__builtin_memcpy(field, new.addr, 16);
		if (src)
			p->saddr = new;
		else
			p->daddr = new;
	}
	return lb_xdp_rewrite_port(check, l4, p, src, port);
}

/* lb_rewrite() of lib/pkt.h for XDP. */
static __always_inline int lb_xdp_rewrite(int fam, struct xdp_md *ctx, struct lb_pkt *p, int src,
					  const union lb_v6addr *addr, __be16 port)
{
	if (fam == LB_V4)
		return lb4_xdp_rewrite(ctx, p, src, addr->p32[0], port);
	return lb6_xdp_rewrite(ctx, p, src, addr, port);
}

#endif /* PYAGENT_LIB_XDP_PKT_H */
