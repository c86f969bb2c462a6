/* SPDX-License-Identifier: Apache-2.0
 *
 * Packet helpers of the TC programs that touch no map (BCC rewrites map
 * calls only in the main file): parsing into struct lb_pkt, NAT rewrites
 * with incremental checksum updates, and turning a packet into its TCP RST
 * or ICMP port-unreachable answer.
 *
 * Headers are read with bpf_skb_load_bytes() rather than direct packet
 * access, so non-linear skbs (GRO, veth) parse the same as linear ones, and
 * written with bpf_skb_store_bytes() + bpf_l{3,4}_csum_replace(), which also
 * keep CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs right.
 */
#ifndef PYAGENT_LIB_PKT_H
#define PYAGENT_LIB_PKT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#include "lb_types.h"

#define LB_TCP_FIN 0x01
#define LB_TCP_SYN 0x02
#define LB_TCP_RST 0x04
#define LB_TCP_ACK 0x10

#define LB_IP_DF      0x4000
#define LB_IP_MF_OFF  0x3fff  /* more-fragments bit and fragment offset */
#define LB_NEXTHDR_FRAGMENT 44
#define LB_NEXTHDR_DSTOPTS  60
#define LB_ICMP_DEST_UNREACH 3
#define LB_ICMP_PORT_UNREACH 3
#define LB_ICMP6_DST_UNREACH 1
#define LB_ICMP6_PORT_UNREACH 4
#define LB_REPLY_TTL 64

/* lb_parse() results */
#define LB_PKT_OTHER 0  /* not IPv4/IPv6 TCP/UDP: never ours */
#define LB_PKT_L4    1  /* TCP or UDP with ports */
#define LB_PKT_FRAG  2  /* a TCP/UDP fragment (or any IPv6 fragment) */
#define LB_PKT_ICMP_ERR 3  /* an ICMP(v6) error quoting a TCP/UDP packet */

struct lb_pkt {
	union lb_v6addr saddr;  /* IPv4 in p32[0], the rest zero */
	union lb_v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 l4_off;           /* from the start of the frame */
	__u32 l4_len;           /* L4 header + payload, per the IP header */
	__u32 tcp_seq;          /* host order */
	__u32 tcp_ack;
	__u16 l3_proto;         /* ETH_P_IP | ETH_P_IPV6, host order */
	__u8  proto;
	__u8  tcp_flags;
	__u8  tcp_doff;         /* TCP header bytes */
	__u8  ip_options;       /* IPv4 header longer than 20 bytes */
	__u8  dsr;              /* carries a DSR option naming (dsr_addr, dsr_port) */
	__u8  pad;
	__be16 dsr_port;
	union lb_v6addr dsr_addr;
	/* LB_PKT_ICMP_ERR: the tuple fields above are the quoted packet's,
	 * reversed (the direction the error travels, as a reply would); the
	 * outer addresses are here. */
	union lb_v6addr outer_saddr;
	union lb_v6addr outer_daddr;
	__u32 icmp_off;         /* ICMP header */
	__u32 inner_off;        /* quoted IP header */
	__u32 inner_l4_off;     /* quoted TCP/UDP header */
};

static __always_inline __u16 lb_csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* A 32-bit mix (murmur3 finaliser): spreads flows over slots and ports. */
static __always_inline __u32 lb_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

/* Same flow (5-tuple) -> same hash, so a flow whose conntrack entry was
 * evicted lands on the same backend while the backend set is unchanged. */
static __always_inline __u32 lb_flow_hash(const struct lb_pkt *p)
{
	__u32 h = lb_mix(p->saddr.p32[0] ^ p->saddr.p32[1] ^ p->saddr.p32[2] ^ p->saddr.p32[3]);

	h = lb_mix(h ^ p->daddr.p32[0] ^ p->daddr.p32[3]);
	return lb_mix(h ^ (((__u32)p->sport << 16) | p->dport) ^ p->proto);
}

static __always_inline int lb_parse_l4(struct __sk_buff *skb, struct lb_pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr th;

		if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
			return LB_PKT_OTHER;
		p->sport = th.source;
		p->dport = th.dest;
		p->tcp_seq = bpf_ntohl(th.seq);
		p->tcp_ack = bpf_ntohl(th.ack_seq);
		p->tcp_doff = th.doff * 4;
		p->tcp_flags = (th.fin ? LB_TCP_FIN : 0) | (th.syn ? LB_TCP_SYN : 0) |
			       (th.rst ? LB_TCP_RST : 0) | (th.ack ? LB_TCP_ACK : 0);
		return LB_PKT_L4;
	}
	if (p->proto == IPPROTO_UDP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
			return LB_PKT_OTHER;
		p->sport = ports[0];
		p->dport = ports[1];
		return LB_PKT_L4;
	}
	return LB_PKT_OTHER;
}

/* ICMP errors about TCP/UDP packets (destination unreachable incl. "frag
 * needed", time exceeded, parameter problem; ICMPv6 also "packet too big")
 * are translated like the flow they belong to, so PMTU discovery and
 * connection errors work through the NAT. Reads the quoted ports. */
static __always_inline int lb_parse_quoted_ports(struct __sk_buff *skb, struct lb_pkt *p)
{
	__be16 ports[2];

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return LB_PKT_OTHER;
	if (bpf_skb_load_bytes(skb, p->inner_l4_off, ports, sizeof(ports)) < 0)
		return LB_PKT_OTHER;
	/* reversed: the error travels back toward the quoted packet's source */
	p->sport = ports[1];
	p->dport = ports[0];
	return LB_PKT_ICMP_ERR;
}

static __always_inline int lb4_parse_icmp(struct __sk_buff *skb, struct lb_pkt *p)
{
	__u8 type;
	struct iphdr in;

	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return LB_PKT_OTHER;
	if (type != 3 && type != 11 && type != 12)
		return LB_PKT_OTHER;
	p->icmp_off = p->l4_off;
	p->inner_off = p->l4_off + 8;
	if (bpf_skb_load_bytes(skb, p->inner_off, &in, sizeof(in)) < 0)
		return LB_PKT_OTHER;
	if (in.version != 4 || in.ihl < 5 || (in.frag_off & bpf_htons(LB_IP_MF_OFF & 0x1fff)))
		return LB_PKT_OTHER;
	p->outer_saddr = p->saddr;
	p->outer_daddr = p->daddr;
	p->saddr.p32[0] = in.daddr;
	p->daddr.p32[0] = in.saddr;
	p->proto = in.protocol;
	p->inner_l4_off = p->inner_off + in.ihl * 4;
	return lb_parse_quoted_ports(skb, p);
}

static __always_inline int lb6_parse_icmp(struct __sk_buff *skb, struct lb_pkt *p)
{
	__u8 type;
	struct ipv6hdr in;

	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return LB_PKT_OTHER;
	if (type < 1 || type > 4)
		return LB_PKT_OTHER;
	p->icmp_off = p->l4_off;
	p->inner_off = p->l4_off + 8;
	if (bpf_skb_load_bytes(skb, p->inner_off, &in, sizeof(in)) < 0)
		return LB_PKT_OTHER;
	p->outer_saddr = p->saddr;
	p->outer_daddr = p->daddr;
	__builtin_memcpy(p->saddr.addr, &in.daddr, 16);
	__builtin_memcpy(p->daddr.addr, &in.saddr, 16);
	p->proto = in.nexthdr;
	p->inner_l4_off = p->inner_off + sizeof(in);
	return lb_parse_quoted_ports(skb, p);
}

/* Ethernet frames only: the programs attach to veths and NICs. */
static __always_inline int lb_parse(struct __sk_buff *skb, struct lb_pkt *p)
{
	__be16 h_proto;

	if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0)
		return LB_PKT_OTHER;
	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return LB_PKT_OTHER;
		if (ip.version != 4 || ip.ihl < 5)
			return LB_PKT_OTHER;
		p->l3_proto = ETH_P_IP;
		p->saddr.p32[0] = ip.saddr;
		p->daddr.p32[0] = ip.daddr;
		p->proto = ip.protocol;
		p->ip_options = ip.ihl > 5;
		p->l4_off = ETH_HLEN + ip.ihl * 4;
		p->l4_len = bpf_ntohs(ip.tot_len) - ip.ihl * 4;
		if (ip.ihl == 7) {
			struct lb_dsr4_opt opt;

			if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), &opt, sizeof(opt)) == 0 &&
			    opt.type == LB_DSR_OPT4 && opt.len == sizeof(opt)) {
				p->dsr = 1;
				p->dsr_port = opt.port;
				p->dsr_addr.p32[0] = opt.addr;
			}
		}
		if (p->proto == IPPROTO_ICMP && !(ip.frag_off & bpf_htons(LB_IP_MF_OFF)))
			return lb4_parse_icmp(skb, p);
		if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
			return LB_PKT_OTHER;
		if (ip.frag_off & bpf_htons(LB_IP_MF_OFF))
			return LB_PKT_FRAG;
		return lb_parse_l4(skb, p);
	}
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return LB_PKT_OTHER;
		p->l3_proto = ETH_P_IPV6;
		__builtin_memcpy(p->saddr.addr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr.addr, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		p->l4_off = ETH_HLEN + sizeof(ip6);
		p->l4_len = bpf_ntohs(ip6.payload_len);
		if (p->proto == LB_NEXTHDR_DSTOPTS) {
			struct lb_dsr6_hdr h;

			if (bpf_skb_load_bytes(skb, p->l4_off, &h, sizeof(h)) < 0 ||
			    h.hdrlen != 2 || h.type != LB_DSR_OPT6 || h.len != 18)
				return LB_PKT_OTHER;
			p->dsr = 1;
			p->dsr_port = h.port;
			__builtin_memcpy(p->dsr_addr.addr, h.addr, 16);
			p->proto = h.nexthdr;
			p->l4_off += sizeof(h);
			p->l4_len -= sizeof(h);
		}
		/* Other extension headers than a fragment header and our DSR
		 * option are not walked: such packets are left alone. */
		if (p->proto == LB_NEXTHDR_FRAGMENT)
			return LB_PKT_FRAG;
		if (p->proto == IPPROTO_ICMPV6)
			return lb6_parse_icmp(skb, p);
		return lb_parse_l4(skb, p);
	}
	return LB_PKT_OTHER;
}

static __always_inline __u32 lb_l4_csum_off(const struct lb_pkt *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? 16 : 6);
}

static __always_inline int lb_rewrite_port(struct __sk_buff *skb, struct lb_pkt *p, int src,
					   __be16 port)
{
	__be16 old = src ? p->sport : p->dport;
	/* A UDP checksum of 0 (IPv4: none) stays 0; a result of 0 is sent
	 * as 0xffff. */
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old == port)
		return 0;
	if (bpf_l4_csum_replace(skb, lb_l4_csum_off(p), old, port, mangled | 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, p->l4_off + (src ? 0 : 2), &port, 2, 0) < 0)
		return -1;
	if (src)
		p->sport = port;
	else
		p->dport = port;
	return 0;
}

/* Rewrite the source (src=1) or destination of an IPv4 packet. */
static __always_inline int lb4_rewrite(struct __sk_buff *skb, struct lb_pkt *p, int src,
				       __be32 addr, __be16 port)
{
	__be32 old = src ? p->saddr.p32[0] : p->daddr.p32[0];
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old != addr) {
		if (bpf_l4_csum_replace(skb, lb_l4_csum_off(p), old, addr,
					BPF_F_PSEUDO_HDR | mangled | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, addr,
					4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (src ? offsetof(struct iphdr, saddr)
							      : offsetof(struct iphdr, daddr)),
					&addr, 4, 0) < 0)
			return -1;
		if (src)
			p->saddr.p32[0] = addr;
		else
			p->daddr.p32[0] = addr;
	}
	return lb_rewrite_port(skb, p, src, port);
}

static __always_inline int lb6_addr_eq(const union lb_v6addr *a, const union lb_v6addr *b)
{
	return a->p64[0] == b->p64[0] && a->p64[1] == b->p64[1];
}

static __always_inline int lb6_rewrite(struct __sk_buff *skb, struct lb_pkt *p, int src,
				       const union lb_v6addr *addr, __be16 port)
{
	union lb_v6addr old = src ? p->saddr : p->daddr;
	union lb_v6addr new = *addr;
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (!lb6_addr_eq(&old, &new)) {
		/* No IPv6 header checksum; the L4 one covers the pseudo
		 * header: apply the 16-byte difference in one go. */
		__s64 diff = bpf_csum_diff(old.p32, 16, new.p32, 16, 0);

		if (bpf_l4_csum_replace(skb, lb_l4_csum_off(p), 0, (__u32)diff,
					BPF_F_PSEUDO_HDR | mangled) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (src ? offsetof(struct ipv6hdr, saddr)
							      : offsetof(struct ipv6hdr, daddr)),
					new.addr, 16, 0) < 0)
			return -1;
		if (src)
			p->saddr = new;
		else
			p->daddr = new;
	}
	return lb_rewrite_port(skb, p, src, port);
}

/* ---- ICMP errors: apply a conntrack entry's rewrite to an error about the
 * flow. p's tuple is the quoted packet reversed, so a DNAT entry (rewrite
 * the destination of that reversed tuple) changes the quoted source and a
 * SNAT entry the quoted destination; the outer address facing the same
 * way changes with it when it is that same host (normally it is; a router
 * in between keeps its own address). The quoted IPv4 header checksum is
 * kept right, which also leaves the ICMP checksum unchanged for it; the
 * quoted TCP/UDP checksum is not (receivers do not check it: Linux looks
 * the socket up by the quoted addresses and ports only). */

static __always_inline int lb4_icmp_xlate(struct __sk_buff *skb, struct lb_pkt *p, int dnat,
					  __be32 addr, __be16 port)
{
	/* dnat: reversed destination = quoted source (+12), outer destination */
	__be32 old = dnat ? p->daddr.p32[0] : p->saddr.p32[0];
	__be16 oldp = dnat ? p->dport : p->sport;
	__be32 outer = dnat ? p->outer_daddr.p32[0] : p->outer_saddr.p32[0];
	__u32 in_addr = p->inner_off + (dnat ? offsetof(struct iphdr, saddr)
					     : offsetof(struct iphdr, daddr));
	__u32 in_port = p->inner_l4_off + (dnat ? 0 : 2);
	__u32 out_addr = ETH_HLEN + (dnat ? offsetof(struct iphdr, daddr)
					  : offsetof(struct iphdr, saddr));

	if (old != addr) {
		if (bpf_l3_csum_replace(skb, p->inner_off + offsetof(struct iphdr, check), old,
					addr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, in_addr, &addr, 4, 0) < 0)
			return -1;
		if (outer == old &&
		    (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, addr,
					 4) < 0 ||
		     bpf_skb_store_bytes(skb, out_addr, &addr, 4, 0) < 0))
			return -1;
	}
	if (oldp != port &&
	    (bpf_l4_csum_replace(skb, p->icmp_off + 2, oldp, port, 2) < 0 ||
	     bpf_skb_store_bytes(skb, in_port, &port, 2, 0) < 0))
		return -1;
	return 0;
}

static __always_inline int lb6_icmp_xlate(struct __sk_buff *skb, struct lb_pkt *p, int dnat,
					  const union lb_v6addr *addr, __be16 port)
{
	union lb_v6addr old = dnat ? p->daddr : p->saddr;
	union lb_v6addr outer = dnat ? p->outer_daddr : p->outer_saddr;
	union lb_v6addr new = *addr;
	__be16 oldp = dnat ? p->dport : p->sport;
	__u32 in_addr = p->inner_off + (dnat ? offsetof(struct ipv6hdr, saddr)
					     : offsetof(struct ipv6hdr, daddr));
	__u32 in_port = p->inner_l4_off + (dnat ? 0 : 2);
	__u32 out_addr = ETH_HLEN + (dnat ? offsetof(struct ipv6hdr, daddr)
					  : offsetof(struct ipv6hdr, saddr));

	if (!lb6_addr_eq(&old, &new)) {
		/* ICMPv6 sums the quoted bytes and, via the pseudo header, the
		 * outer addresses. */
		__u32 diff = bpf_csum_diff(old.p32, 16, new.p32, 16, 0);

		if (bpf_l4_csum_replace(skb, p->icmp_off + 2, 0, diff, 0) < 0 ||
		    bpf_skb_store_bytes(skb, in_addr, new.addr, 16, 0) < 0)
			return -1;
		if (lb6_addr_eq(&outer, &old) &&
		    (bpf_l4_csum_replace(skb, p->icmp_off + 2, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
		     bpf_skb_store_bytes(skb, out_addr, new.addr, 16, 0) < 0))
			return -1;
	}
	if (oldp != port &&
	    (bpf_l4_csum_replace(skb, p->icmp_off + 2, oldp, port, 2) < 0 ||
	     bpf_skb_store_bytes(skb, in_port, &port, 2, 0) < 0))
		return -1;
	return 0;
}

/* The rewrites above for family fam (LB_V4 / LB_V6), the address as a
 * union lb_v6addr with IPv4 in p32[0]. */
static __always_inline int lb_rewrite(int fam, struct __sk_buff *skb, struct lb_pkt *p, int src,
				      const union lb_v6addr *addr, __be16 port)
{
	if (fam == LB_V4)
		return lb4_rewrite(skb, p, src, addr->p32[0], port);
	return lb6_rewrite(skb, p, src, addr, port);
}

/* Insert the DSR option naming frontend (addr, port) after the IP header of
 * a packet that has none (p->ip_options clear, no IPv6 extension header).
 * The L4 checksum does not change: its pseudo header holds neither. */
static __always_inline int lb4_dsr_push(struct __sk_buff *skb, struct lb_pkt *p, __be32 addr,
					__be16 port)
{
	struct {
		struct iphdr ip;
		struct lb_dsr4_opt opt;
	} h;
	__u32 sum;

	if (bpf_skb_adjust_room(skb, sizeof(h.opt), BPF_ADJ_ROOM_NET, 0) < 0)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &h.ip, sizeof(h.ip)) < 0)
		return -1;
	h.opt.type = LB_DSR_OPT4;
	h.opt.len = sizeof(h.opt);
	h.opt.port = port;
	h.opt.addr = addr;
	h.ip.ihl = (sizeof(h.ip) + sizeof(h.opt)) / 4;
	h.ip.tot_len = bpf_htons(bpf_ntohs(h.ip.tot_len) + sizeof(h.opt));
	h.ip.check = 0;
	sum = bpf_csum_diff(0, 0, (__be32 *)&h, sizeof(h), 0);
	h.ip.check = lb_csum_fold(sum);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) < 0)
		return -1;
	p->l4_off += sizeof(h.opt);
	p->ip_options = 1;
	return 0;
}

static __always_inline int lb6_dsr_push(struct __sk_buff *skb, struct lb_pkt *p,
					const union lb_v6addr *addr, __be16 port)
{
	struct lb_dsr6_hdr h = {
		.nexthdr = p->proto, .hdrlen = 2, .type = LB_DSR_OPT6, .len = 18,
		.port = port, .pad_type = 1, .pad_len = 0,
	};
	struct {
		__be16 payload_len;
		__u8 nexthdr;
	} __attribute__((packed)) fix;

	__builtin_memcpy(h.addr, addr->addr, 16);
	if (bpf_skb_adjust_room(skb, sizeof(h), BPF_ADJ_ROOM_NET, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), &h, sizeof(h), 0) < 0)
		return -1;
	fix.payload_len = bpf_htons(p->l4_len + sizeof(h));
	fix.nexthdr = LB_NEXTHDR_DSTOPTS;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, payload_len), &fix,
				sizeof(fix), 0) < 0)
		return -1;
	p->l4_off += sizeof(h);
	return 0;
}

static __always_inline int lb_dsr_push(int fam, struct __sk_buff *skb, struct lb_pkt *p,
				       const union lb_v6addr *addr, __be16 port)
{
	if (fam == LB_V4)
		return lb4_dsr_push(skb, p, addr->p32[0], port);
	return lb6_dsr_push(skb, p, addr, port);
}

static __always_inline int lb_icmp_xlate(int fam, struct __sk_buff *skb, struct lb_pkt *p,
					 int dnat, const union lb_v6addr *addr, __be16 port)
{
	if (fam == LB_V4)
		return lb4_icmp_xlate(skb, p, dnat, addr->p32[0], port);
	return lb6_icmp_xlate(skb, p, dnat, addr, port);
}

/* ---- REJECT: answer in place and send the answer back out the same
 * device. The frame is resized to the answer (bpf_skb_change_tail) and
 * every header written from the stack with checksums computed afresh. */

struct lb_pseudo4 {
	__be32 saddr;
	__be32 daddr;
	__u8  zero;
	__u8  proto;
	__be16 len;
};

struct lb_pseudo6 {
	union lb_v6addr saddr;
	union lb_v6addr daddr;
	__be32 len;
	__u8  zero[3];
	__u8  nexthdr;
};

/* Scratch space for building an answer: BCC inlines everything into one
 * stack frame of at most 512 bytes, so the caller passes a per-CPU map value. */
struct lb_reject_buf {
	__u8 eth[16];            /* 14 used */
	struct iphdr ip;
	struct ipv6hdr ip6;
	struct lb_pseudo4 ph4;
	struct lb_pseudo6 ph6;
	struct tcphdr th;
	__u32 icmp[2];
	__u32 quote[12];         /* IPv4: 20 + 8 bytes, IPv6: 40 + 8 bytes */
};

/* The answer's Ethernet header: MACs swapped, same EtherType. */
static __always_inline int lb_reply_eth(struct __sk_buff *skb, __u8 *eth)
{
	__u8 macs[12];

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return -1;
#pragma unroll
	for (int i = 0; i < 6; i++) {
		eth[i] = macs[6 + i];
		eth[6 + i] = macs[i];
	}
	return 0;
}

static __always_inline void lb_tcp_rst_fields(const struct lb_pkt *p, struct tcphdr *th)
{
	__u32 seg = p->l4_len - p->tcp_doff;

	th->source = p->dport;
	th->dest = p->sport;
	th->doff = 5;
	th->rst = 1;
	/* RFC 9293 reset generation: take the ACK as our sequence number if
	 * there is one, else acknowledge everything the segment occupied. */
	if (p->tcp_flags & LB_TCP_ACK) {
		th->seq = bpf_htonl(p->tcp_ack);
	} else {
		th->ack = 1;
		seg += (p->tcp_flags & LB_TCP_SYN ? 1 : 0) + (p->tcp_flags & LB_TCP_FIN ? 1 : 0);
		th->ack_seq = bpf_htonl(p->tcp_seq + seg);
	}
}

/* TCP: RST. UDP: ICMP port unreachable quoting the IP header + 8 bytes. */
static __always_inline int lb4_reject(struct __sk_buff *skb, const struct lb_pkt *p,
				      struct lb_reject_buf *b)
{
	__u32 l4len, csum;

	__builtin_memset(b, 0, sizeof(*b));
	if (p->ip_options || lb_reply_eth(skb, b->eth) < 0)
		return TC_ACT_SHOT;
	b->eth[12] = 0x08;
	b->eth[13] = 0x00;
	b->ip.version = 4;
	b->ip.ihl = 5;
	b->ip.frag_off = bpf_htons(LB_IP_DF);
	b->ip.ttl = LB_REPLY_TTL;
	b->ip.saddr = p->daddr.p32[0];
	b->ip.daddr = p->saddr.p32[0];

	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & LB_TCP_RST)
			return TC_ACT_SHOT;  /* never answer a reset */
		lb_tcp_rst_fields(p, &b->th);
		l4len = sizeof(b->th);
		b->ph4.saddr = b->ip.saddr;
		b->ph4.daddr = b->ip.daddr;
		b->ph4.proto = IPPROTO_TCP;
		b->ph4.len = bpf_htons(l4len);
		csum = bpf_csum_diff(0, 0, (void *)&b->ph4, sizeof(b->ph4), 0);
		csum = bpf_csum_diff(0, 0, (void *)&b->th, sizeof(b->th), csum);
		b->th.check = lb_csum_fold(csum);
		b->ip.protocol = IPPROTO_TCP;
		b->ip.tot_len = bpf_htons(sizeof(b->ip) + l4len);
		b->ip.check = lb_csum_fold(bpf_csum_diff(0, 0, (void *)&b->ip, sizeof(b->ip), 0));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(b->ip) + l4len, 0) < 0 ||
		    bpf_skb_store_bytes(skb, 0, b->eth, ETH_HLEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &b->ip, sizeof(b->ip), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(b->ip), &b->th, sizeof(b->th), 0) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(skb->ifindex, 0);
	}
	if (bpf_skb_load_bytes(skb, ETH_HLEN, b->quote, 28) < 0)
		return TC_ACT_SHOT;
	((__u8 *)b->icmp)[0] = LB_ICMP_DEST_UNREACH;
	((__u8 *)b->icmp)[1] = LB_ICMP_PORT_UNREACH;
	csum = bpf_csum_diff(0, 0, b->icmp, sizeof(b->icmp), 0);
	csum = bpf_csum_diff(0, 0, b->quote, 28, csum);
	((__u16 *)b->icmp)[1] = lb_csum_fold(csum);
	l4len = sizeof(b->icmp) + 28;
	b->ip.protocol = IPPROTO_ICMP;
	b->ip.tot_len = bpf_htons(sizeof(b->ip) + l4len);
	b->ip.check = lb_csum_fold(bpf_csum_diff(0, 0, (void *)&b->ip, sizeof(b->ip), 0));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(b->ip) + l4len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, b->eth, ETH_HLEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &b->ip, sizeof(b->ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(b->ip), b->icmp, sizeof(b->icmp), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(b->ip) + sizeof(b->icmp), b->quote, 28,
				0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* TCP: RST. UDP: ICMPv6 port unreachable quoting the IPv6 header + 8 bytes. */
static __always_inline int lb6_reject(struct __sk_buff *skb, const struct lb_pkt *p,
				      struct lb_reject_buf *b)
{
	__u32 l4len, csum;

	__builtin_memset(b, 0, sizeof(*b));
	if (lb_reply_eth(skb, b->eth) < 0)
		return TC_ACT_SHOT;
	b->eth[12] = 0x86;
	b->eth[13] = 0xdd;
	b->ip6.version = 6;
	b->ip6.hop_limit = LB_REPLY_TTL;
	__builtin_memcpy(&b->ip6.saddr, p->daddr.addr, 16);
	__builtin_memcpy(&b->ip6.daddr, p->saddr.addr, 16);
	b->ph6.saddr = p->daddr;
	b->ph6.daddr = p->saddr;

	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & LB_TCP_RST)
			return TC_ACT_SHOT;
		lb_tcp_rst_fields(p, &b->th);
		l4len = sizeof(b->th);
		b->ph6.nexthdr = IPPROTO_TCP;
		b->ph6.len = bpf_htonl(l4len);
		csum = bpf_csum_diff(0, 0, (void *)&b->ph6, sizeof(b->ph6), 0);
		csum = bpf_csum_diff(0, 0, (void *)&b->th, sizeof(b->th), csum);
		b->th.check = lb_csum_fold(csum);
		b->ip6.nexthdr = IPPROTO_TCP;
		b->ip6.payload_len = bpf_htons(l4len);
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(b->ip6) + l4len, 0) < 0 ||
		    bpf_skb_store_bytes(skb, 0, b->eth, ETH_HLEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &b->ip6, sizeof(b->ip6), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(b->ip6), &b->th, sizeof(b->th),
					0) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(skb->ifindex, 0);
	}
	if (bpf_skb_load_bytes(skb, ETH_HLEN, b->quote, sizeof(b->quote)) < 0)
		return TC_ACT_SHOT;
	((__u8 *)b->icmp)[0] = LB_ICMP6_DST_UNREACH;
	((__u8 *)b->icmp)[1] = LB_ICMP6_PORT_UNREACH;
	l4len = sizeof(b->icmp) + sizeof(b->quote);
	b->ph6.nexthdr = IPPROTO_ICMPV6;
	b->ph6.len = bpf_htonl(l4len);
	csum = bpf_csum_diff(0, 0, (void *)&b->ph6, sizeof(b->ph6), 0);
	csum = bpf_csum_diff(0, 0, b->icmp, sizeof(b->icmp), csum);
	csum = bpf_csum_diff(0, 0, b->quote, sizeof(b->quote), csum);
	((__u16 *)b->icmp)[1] = lb_csum_fold(csum);
	b->ip6.nexthdr = IPPROTO_ICMPV6;
	b->ip6.payload_len = bpf_htons(l4len);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(b->ip6) + l4len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, b->eth, ETH_HLEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &b->ip6, sizeof(b->ip6), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(b->ip6), b->icmp, sizeof(b->icmp), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(b->ip6) + sizeof(b->icmp), b->quote,
				sizeof(b->quote), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* PYAGENT_LIB_PKT_H */
