/* SPDX-License-Identifier: Apache-2.0
 *
 * North-south load balancing at TC (clsact): traffic entering the node for
 * a NodePort, externalIP or LoadBalancer frontend (services-map scope
 * EXTERNAL) is DNATed to a backend, masqueraded where the frontend says so
 * or the backend is on another node, and its replies are translated back.
 * Traffic entering for a ClusterIP (no EXTERNAL entry, but an INTERNAL one
 * with LB_F_CLUSTER_IP: kube-proxy DNATs it in PREROUTING) is served from
 * that entry, whose backends already follow internalTrafficPolicy, and
 * masqueraded exactly when lb_node_config says so for the family
 * (LB_CFG_F_MASQ_CLUSTER_IP*: masqueradeAll or a local-traffic detector).
 *
 * Programs (all return TC_ACT_OK unless noted):
 *   lb_netdev_ingress  node interfaces, ingress: conntrack, then new flows
 *                      to frontends (DROP -> TC_ACT_SHOT, REJECT -> the
 *                      RST / ICMP answer via TC_ACT_REDIRECT)
 *   lb_pod_ingress     host side of pod links, ingress (packets from pods):
 *                      conntrack; with LB_CFG_F_POD_LB also new flows to
 *                      INTERNAL frontends, for pods the socket LB skips
 *                      (lb_sock_config); never external flows
 *   lb_egress          node interfaces and pod links, egress: conntrack only
 *   lb_xdp_ingress     node interfaces, XDP (optional): lb_netdev_ingress's
 *                      logic for the common packet shapes, in front of it;
 *                      what it cannot do it leaves to TC untouched
 *
 * Every flow is translated in two halves with the kernel's routing between
 * them (see the conntrack comment in lb_types.h): DNAT on the way in, SNAT
 * on the way out. No packet ever carries a node-local source address into
 * the routing input path (which would drop it as a martian), and no FIB
 * lookup or redirect is needed for forwarded traffic: the node needs IP
 * forwarding, as every Kubernetes node does.
 *
 * ICMP(v6) errors quoting a tracked TCP/UDP packet are translated like the
 * flow (outer and quoted addresses and ports), so "fragmentation needed" /
 * "packet too big" and unreachables reach the real peer.
 *
 * Left alone on purpose (TC_ACT_OK, counted where useful): other non-TCP/UDP
 * traffic (ICMP echo to a node IP is answered by the node), IPv4 fragments
 * and IPv6 packets with extension headers (no ports to match: a fragmented
 * datagram to a frontend reaches the node itself and gets its ordinary
 * answer, port unreachable, instead of half of it being translated),
 * packets to addresses without an EXTERNAL frontend or a ClusterIP.
 *
 * Backend choice for a new flow: a live session-affinity entry whose
 * backend is still a member (lb_aff_match, the frontend's scope); else, for
 * LB_ALG_MAGLEV frontends, the service's Maglev table (lb_maglev); else
 * slot hash % count + 1 of the frontend.
 *
 * Compile-time options (-D): PIN_DIR, LB_*_MAP_MAX (see lb_types.h),
 * LB_EXPECTED_LAYOUT_VERSION, as for sock_lb.c.
 */
#include "lib/pkt.h"
#include "lib/xdp_pkt.h"
#include "lib/tc_maps.h"
#include "lib/lb.h"

#define SNAT_PORT_TRIES 16  /* masquerade ports probed per new flow */

/* Where the shared logic below runs: a compile-time constant at every
 * entry point, so each program keeps only its own packet access. */
#define AT_TC  0
#define AT_XDP 1
/* handle() at XDP: leave this packet to TC, untouched (what XDP cannot
 * do: REJECT answers, DSR options, ICMP errors, odd headers). */
#define LB_PUNT 100

#ifndef LB_XDP_MARK
#define LB_XDP_MARK 0x7079a6e7  /* the loader passes a fresh value per load */
#endif
#define LB_NSEC_PER_SEC 1000000000ULL

/* Private per-CPU scratch for building REJECT answers (not pinned). */
BPF_PERCPU_ARRAY(lb_tc_scratch, struct lb_reject_buf, 1);

/* Map access for lib/lb.h: BCC rewrites map calls only in this file. */
static __always_inline struct lb_service *lb4_services_get(struct lb4_key *k)
{ return lb4_services.lookup(k); }
static __always_inline struct lb_service *lb6_services_get(struct lb6_key *k)
{ return lb6_services.lookup(k); }
static __always_inline struct lb4_backend *lb4_backends_get(__u32 *id)
{ return lb4_backends.lookup(id); }
static __always_inline struct lb6_backend *lb6_backends_get(__u32 *id)
{ return lb6_backends.lookup(id); }
static __always_inline struct lb_svc_stats *lb_svc_stats_get(__u32 *rev_nat_id)
{ return lb_svc_stats.lookup(rev_nat_id); }
static __always_inline __u64 *lb_be_stats_get(__u32 *backend_id)
{ return lb_be_stats.lookup(backend_id); }
static __always_inline struct lb_affinity_val *lb_affinity_get(struct lb_affinity_key *k)
{ return lb_affinity.lookup(k); }
static __always_inline void lb_affinity_put(struct lb_affinity_key *k, struct lb_affinity_val *v)
{ lb_affinity.update(k, v); }
static __always_inline __u8 *lb_aff_match_get(struct lb_affinity_match_key *k)
{ return lb_aff_match.lookup(k); }
static __always_inline struct lb_monitor *lb_monitor_get(void)
{ __u32 k = LB_MONITOR_KEY; return lb_monitor.lookup(&k); }
static __always_inline void *lb_mon_ring_get(__u32 slot)
{ return lb_mon_rings.lookup(&slot); }

static __always_inline void tc_count(__u32 what)
{
	struct lb_tc_stat *s = lb_tc_stats.lookup(&what);

	if (s)
		s->packets++;
}

static __always_inline __u64 now_sec(void)
{
	return bpf_ktime_get_ns() / LB_NSEC_PER_SEC;
}

static __always_inline struct lb_node_config *node_config(void)
{
	__u32 k = LB_CONFIG_KEY;

	return lb_node_config.lookup(&k);
}

static __always_inline __u64 ct_timeout(const struct lb_node_config *cfg, __u8 proto, int closing)
{
	__u32 t;

	if (closing) {
		t = cfg ? cfg->ct_timeout_closing : 0;
		return t ? t : LB_CT_TIMEOUT_CLOSING_DEFAULT;
	}
	if (proto == IPPROTO_TCP) {
		t = cfg ? cfg->ct_timeout_tcp : 0;
		return t ? t : LB_CT_TIMEOUT_TCP_DEFAULT;
	}
	t = cfg ? cfg->ct_timeout_other : 0;
	return t ? t : LB_CT_TIMEOUT_OTHER_DEFAULT;
}

static __always_inline int is_closing(const struct lb_pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (LB_TCP_FIN | LB_TCP_RST));
}

/* A TCP SYN without ACK: the start of a new connection, possibly reusing
 * the ports of a closed one. */
static __always_inline int is_syn(const struct lb_pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK)) == LB_TCP_SYN;
}

static __always_inline __u16 snat_port(const struct lb_node_config *cfg, __u32 hash, int i)
{
	__u16 lo = cfg->snat_port_min ? cfg->snat_port_min : LB_SNAT_PORT_MIN_DEFAULT;
	__u16 hi = cfg->snat_port_max ? cfg->snat_port_max : LB_SNAT_PORT_MAX_DEFAULT;
	__u32 span = hi >= lo ? (__u32)(hi - lo) + 1 : 1;

	return lo + (__u16)(lb_mix(hash + i * 0x9e3779b9U) % span);
}

/* Session affinity key on the TC path: the client address (IPv6 folded to
 * 64 bits; a collision only shares a backend choice). */
static __always_inline __u64 affinity_client(int fam, const struct lb_pkt *p)
{
	if (fam == LB_V4)
		return p->saddr.p32[0];
	return p->saddr.p64[0] ^ p->saddr.p64[1];
}

/* LB_ALG_MAGLEV: the backend id at table[hash % LB_MAGLEV_M] of the
 * service's Maglev table, or 0 when it has none (not synced yet, or an
 * empty entry): the caller then takes the hash % count slot. */
static __always_inline __u32 maglev_pick(__u32 rev_nat_id, __u32 hash)
{
	__u32 k = rev_nat_id, idx = hash % LB_MAGLEV_M;
	__u32 *id;
	void *table = lb_maglev.lookup(&k);

	if (!table)
		return 0;
	id = bpf_map_lookup_elem(table, &idx);
	return id ? *id : 0;
}

static __always_inline int reject(int fam, struct __sk_buff *skb, const struct lb_pkt *p)
{
	__u32 zero = 0;
	struct lb_reject_buf *b = lb_tc_scratch.lookup(&zero);

	if (!b)
		return TC_ACT_SHOT;
	return fam == LB_V4 ? lb4_reject(skb, p, b) : lb6_reject(skb, p, b);
}

/* lb_rewrite() with the packet access of where it runs. */
static __always_inline int pkt_rewrite(int fam, int at, void *ctx, struct lb_pkt *p, int src,
				       const union lb_v6addr *addr, __be16 port)
{
	if (at == AT_XDP)
		return lb_xdp_rewrite(fam, ctx, p, src, addr, port);
	return lb_rewrite(fam, ctx, p, src, addr, port);
}

/* loadBalancerSourceRanges: may this client use the frontend? */
static __always_inline int src_range_allows(int fam, __u32 rev_nat_id, const union lb_v6addr *client)
{
	if (fam == LB_V4) {
		struct lb4_src_range_key rk = {};

		rk.prefixlen = LB_SRC_RANGE_PREFIX_BITS + 32;
		rk.rev_nat_id = rev_nat_id;
		rk.address = client->p32[0];
		return lb4_srcrange.lookup(&rk) != 0;
	}
	struct lb6_src_range_key rk = {};

	rk.prefixlen = LB_SRC_RANGE_PREFIX_BITS + 128;
	rk.rev_nat_id = rev_nat_id;
	rk.address = *client;
	return lb6_srcrange.lookup(&rk) != 0;
}

/* ------------------------------------------------------------- conntrack */

/* A conntrack key or value of either family. */
union ct_key {
	struct lb4_ct_key v4;
	struct lb6_ct_key v6;
};

union ct_val {
	struct lb4_ct_val v4;
	struct lb6_ct_val v6;
};

/* Field f of a conntrack value of family fam (same name and type in both). */
#define CT_VAL(fam, v, f) \
	(*((fam) == LB_V4 ? &((struct lb4_ct_val *)(v))->f : &((struct lb6_ct_val *)(v))->f))

/* key := (saddr, daddr, sport, dport, proto, stage), every byte set. */
static __always_inline void ct_key(int fam, union ct_key *k, const union lb_v6addr *saddr,
				   const union lb_v6addr *daddr, __be16 sport, __be16 dport,
				   __u8 proto, __u8 stage)
{
	if (fam == LB_V4) {
		k->v4.saddr = saddr->p32[0];
		k->v4.daddr = daddr->p32[0];
		k->v4.sport = sport;
		k->v4.dport = dport;
		k->v4.proto = proto;
		k->v4.stage = stage;
		k->v4.pad[0] = k->v4.pad[1] = 0;
	} else {
		k->v6.saddr = *saddr;
		k->v6.daddr = *daddr;
		k->v6.sport = sport;
		k->v6.dport = dport;
		k->v6.proto = proto;
		k->v6.stage = stage;
		k->v6.pad[0] = k->v6.pad[1] = 0;
	}
}

/* The key's own conntrack entry of packet p at stage. */
static __always_inline void ct_key_of(int fam, union ct_key *k, const struct lb_pkt *p, __u8 stage)
{
	ct_key(fam, k, &p->saddr, &p->daddr, p->sport, p->dport, p->proto, stage);
}

static __always_inline void *ct_lookup(int fam, union ct_key *k)
{
	if (fam == LB_V4)
		return lb4_ct.lookup(&k->v4);
	return lb6_ct.lookup(&k->v6);
}

static __always_inline void ct_update(int fam, union ct_key *k, union ct_val *v)
{
	if (fam == LB_V4)
		lb4_ct.update(&k->v4, &v->v4);
	else
		lb6_ct.update(&k->v6, &v->v6);
}

/* 0 when k was free and now holds v. */
static __always_inline int ct_insert(int fam, union ct_key *k, union ct_val *v)
{
	if (fam == LB_V4)
		return lb4_ct.insert(&k->v4, &v->v4);
	return lb6_ct.insert(&k->v6, &v->v6);
}

static __always_inline void ct_delete(int fam, union ct_key *k)
{
	if (fam == LB_V4)
		lb4_ct.delete(&k->v4);
	else
		lb6_ct.delete(&k->v6);
}

/* v := an entry with flags, for rev_nat_id, until expires; no NAT yet. */
static __always_inline void ct_entry(int fam, union ct_val *v, __u8 flags, __u32 rev_nat_id,
				     __u64 expires)
{
	if (fam == LB_V4)
		__builtin_memset(&v->v4, 0, sizeof(v->v4));
	else
		__builtin_memset(&v->v6, 0, sizeof(v->v6));
	CT_VAL(fam, v, flags) = flags;
	CT_VAL(fam, v, rev_nat_id) = rev_nat_id;
	CT_VAL(fam, v, expires) = expires;
}

/* The entry's source (snat) or destination rewrite: (addr, port). */
static __always_inline void ct_entry_nat(int fam, union ct_val *v, int snat,
					 const union lb_v6addr *addr, __be16 port)
{
	if (fam == LB_V4) {
		if (snat)
			v->v4.saddr = addr->p32[0];
		else
			v->v4.daddr = addr->p32[0];
	} else {
		if (snat)
			v->v6.saddr = *addr;
		else
			v->v6.daddr = *addr;
	}
	if (snat)
		CT_VAL(fam, v, sport) = port;
	else
		CT_VAL(fam, v, dport) = port;
}

/* out := a found entry's source (snat) or destination address. */
static __always_inline void ct_nat_addr(int fam, const void *v, int snat, union lb_v6addr *out)
{
	if (fam == LB_V4)
		out->p32[0] = snat ? ((const struct lb4_ct_val *)v)->saddr
				   : ((const struct lb4_ct_val *)v)->daddr;
	else
		*out = snat ? ((const struct lb6_ct_val *)v)->saddr
			    : ((const struct lb6_ct_val *)v)->daddr;
}

/* Apply a found entry's rewrites to p (icmp: to the ICMP error about it). */
static __always_inline int ct_apply(int fam, int at, void *ctx, struct lb_pkt *p, void *v,
				    int icmp)
{
	union lb_v6addr a;
	__u8 flags = CT_VAL(fam, v, flags);

	if (flags & LB_CT_F_DNAT) {
		ct_nat_addr(fam, v, 0, &a);
		if ((icmp ? lb_icmp_xlate(fam, ctx, p, 1, &a, CT_VAL(fam, v, dport))
			  : pkt_rewrite(fam, at, ctx, p, 0, &a, CT_VAL(fam, v, dport))) < 0)
			return -1;
	}
	if (flags & LB_CT_F_SNAT) {
		ct_nat_addr(fam, v, 1, &a);
		if ((icmp ? lb_icmp_xlate(fam, ctx, p, 0, &a, CT_VAL(fam, v, sport))
			  : pkt_rewrite(fam, at, ctx, p, 1, &a, CT_VAL(fam, v, sport))) < 0)
			return -1;
	}
	return 0;
}

/* p's live entry at stage, or 0. */
static __always_inline void *ct_find(int fam, const struct lb_pkt *p, __u8 stage, __u64 now)
{
	union ct_key key;
	void *v;

	ct_key_of(fam, &key, p, stage);
	v = ct_lookup(fam, &key);
	if (!v || CT_VAL(fam, v, expires) < now)
		return 0;
	return v;
}

/* 1: translated by an existing entry, 0: no (usable) entry, -1: error,
 * LB_PUNT: XDP leaves it to TC (the packet must carry a DSR option). */
static __always_inline int ct_handle(int fam, int at, void *ctx, struct lb_pkt *p, __u8 stage,
				     const struct lb_node_config *cfg, __u64 now)
{
	void *v = ct_find(fam, p, stage, now);
	union lb_v6addr frontend;
	__be16 fport;
	int push;

	if (!v)
		return 0;
	if (CT_VAL(fam, v, flags) & LB_CT_F_SERVICE) {
		struct lb_be be;
		union lb_v6addr daddr;

		/* The backend went away (or its id now names another): pick a
		 * new one; the new backend resets a TCP connection it does not
		 * know, which is the right outcome for the client. */
		if (lb_backend(fam, CT_VAL(fam, v, backend_id), &be) < 0)
			return 0;
		ct_nat_addr(fam, v, 0, &daddr);
		if (!lb_addr_eq(fam, &be.address, &daddr) || be.port != CT_VAL(fam, v, dport))
			return 0;
		if ((CT_VAL(fam, v, flags) & LB_CT_F_CLOSING) && is_syn(p))
			return 0;
	}
	/* a retransmitted SYN, or any datagram, tells the backend node again */
	push = (CT_VAL(fam, v, flags) & LB_CT_F_DSR) && (p->proto == IPPROTO_UDP || is_syn(p));
	if (push && at == AT_XDP)
		return LB_PUNT;
	if (is_closing(p))
		CT_VAL(fam, v, flags) |= LB_CT_F_CLOSING;
	CT_VAL(fam, v, expires) =
		now + ct_timeout(cfg, p->proto, CT_VAL(fam, v, flags) & LB_CT_F_CLOSING);
	frontend = p->daddr;
	fport = p->dport;
	if (ct_apply(fam, at, ctx, p, v, 0) < 0)
		return -1;
	if (push && lb_dsr_push(fam, ctx, p, &frontend, fport) < 0)
		return -1;
	return 1;
}

/* An ICMP error about a tracked flow: apply the entry without refreshing
 * it. 1: translated, 0: not ours, -1: error. */
static __always_inline int ct_icmp(int fam, struct __sk_buff *skb, struct lb_pkt *p, __u8 stage,
				   __u64 now)
{
	void *v = ct_find(fam, p, stage, now);

	if (!v)
		return 0;
	if (ct_apply(fam, AT_TC, skb, p, v, 1) < 0)
		return -1;
	return 1;
}

/* Choose a free masquerade port: the reply-side entry (B,b -> N,n) must be
 * unique. Returns the port (network order) or 0 when none is free. */
static __always_inline __be16 snat_reserve(int fam, const struct lb_node_config *cfg,
					   const struct lb_pkt *p, const union lb_v6addr *baddr,
					   __be16 bport, const union lb_v6addr *naddr, __u64 now,
					   union ct_val *reply)
{
	union ct_key key;
	/* A random start, not the flow's hash alone: when all SNAT_PORT_TRIES
	 * ports are taken the packet is dropped, and the retransmission must
	 * probe other ports, not the same ones again while others are free. */
	__u32 hash = lb_flow_hash(p) ^ bpf_get_prandom_u32();

	ct_key(fam, &key, baddr, naddr, bport, 0, p->proto, LB_CT_INGRESS);
#pragma unroll
	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		__be16 port = bpf_htons(snat_port(cfg, hash, i));
		void *old;

		if (fam == LB_V4)
			key.v4.dport = port;
		else
			key.v6.dport = port;
		if (ct_insert(fam, &key, reply) == 0)
			return port;
		old = ct_lookup(fam, &key);
		if (old && CT_VAL(fam, old, expires) < now) {
			ct_update(fam, &key, reply);
			return port;
		}
	}
	return 0;
}

/* The node address to masquerade as, or -1 when the node has none. */
static __always_inline int snat_addr(int fam, const struct lb_node_config *cfg,
				     union lb_v6addr *naddr)
{
	if (!cfg || !(cfg->flags & (fam == LB_V4 ? LB_CFG_F_SNAT4 : LB_CFG_F_SNAT6)))
		return -1;
	if (fam == LB_V4)
		naddr->p32[0] = cfg->snat_ip4;
	else
		*naddr = cfg->snat_ip6;
	return 0;
}

/* The backend of a new flow: a live affinity entry, then (LB_ALG_MAGLEV)
 * the Maglev table, then slot hash % count + 1. A choice naming a backend
 * that is gone (maps mid-update) falls through to the next. 0: none. */
static __always_inline __u32 select_backend(int fam, const struct lb_pkt *p, union lb_key *skey,
					    __u8 scope, const struct lb_service *svc, __u32 hash,
					    __u64 now, int *affinity_hit)
{
	__u32 rev_nat_id = svc->rev_nat_id;
	__u32 backend_id = 0;

	if (svc->flags & LB_F_AFFINITY) {
		backend_id = lb_affinity_backend(affinity_client(fam, p), 0, rev_nat_id,
						 scope, svc->affinity_timeout, now);
		if (backend_id && !lb_backend_exists(fam, backend_id))
			backend_id = 0;
		*affinity_hit = backend_id != 0;
	}
	if (!backend_id && svc->algorithm == LB_ALG_MAGLEV) {
		backend_id = maglev_pick(rev_nat_id, hash);
		if (backend_id && !lb_backend_exists(fam, backend_id))
			backend_id = 0;
	}
	if (!backend_id)
		backend_id = lb_slot_backend(fam, skey, lb_slot(hash, svc->count));
	return backend_id;
}

/* A new-flow decision to the monitors (called only when lb_monitor_on()). */
static __always_inline void tc_event(int fam, int at, struct lb_monitor *m,
				     const struct lb_pkt *p, __u32 rev_nat_id, __u8 verdict,
				     __u32 backend_id, const struct lb_be *be)
{
	struct lb_event ev;

	lb_ev_init(fam, &ev, at == AT_XDP ? LB_EV_FROM_XDP : LB_EV_FROM_TC, p->proto, &p->daddr, p->dport, rev_nat_id, verdict);
	lb_addr_copy(fam, &ev.client, &p->saddr);
	ev.client_port = p->sport;
	if (be)
		lb_ev_backend(fam, &ev, backend_id, be);
	lb_mon_emit(m, &ev);
}

/* The master entry a new flow to (daddr, dport, proto) is served by, with
 * *scope its scope: the EXTERNAL frontend, else a ClusterIP's INTERNAL one
 * (only LB_F_CLUSTER_IP: the INTERNAL entries of NodePorts, externalIPs
 * and LB IPs are the pod/node short-circuit, never reachable from outside
 * under their own policy). 0: not a frontend. No EXTERNAL copies of the
 * ClusterIPs: the services map stays the size it is without TC. */
static __always_inline struct lb_service *frontend_of(int fam, const struct lb_pkt *p,
						      union lb_key *skey, __u8 *scope, int from_pod)
{
	struct lb_service *svc;

	if (from_pod) {
		/* a pod outside the socket LB's scope: the entries its
		 * connect() would have been translated with */
		*scope = LB_SCOPE_INTERNAL;
		lb_key_init(fam, skey, &p->daddr, p->dport, p->proto, LB_SCOPE_INTERNAL);
		return lb_service_at(fam, skey, LB_MASTER_SLOT);
	}
	*scope = LB_SCOPE_EXTERNAL;
	lb_key_init(fam, skey, &p->daddr, p->dport, p->proto, LB_SCOPE_EXTERNAL);
	svc = lb_service_at(fam, skey, LB_MASTER_SLOT);
	if (svc)
		return svc;
	*scope = LB_SCOPE_INTERNAL;
	lb_key_init(fam, skey, &p->daddr, p->dport, p->proto, LB_SCOPE_INTERNAL);
	svc = lb_service_at(fam, skey, LB_MASTER_SLOT);
	return svc && (svc->flags & LB_F_CLUSTER_IP) ? svc : 0;
}

/* Masquerade a new flow to backend be? EXTERNAL frontends: with
 * LB_F_MASQUERADE (eTP=Cluster), and always for a remote backend, whose
 * reply must come back through this node. ClusterIPs: as kube-proxy, only
 * by the node's rule for the family; a remote backend's reply then needs a
 * route back through this node, as it does with kube-proxy. From a pod: only
 * a pod reaching itself (kube-proxy's hairpin masquerade), whose reply
 * would otherwise never leave it; like the socket LB, nothing else. */
static __always_inline int want_masq(int fam, const struct lb_node_config *cfg, __u8 scope,
				     __u16 flags, const struct lb_be *be, const struct lb_pkt *p,
				     int from_pod)
{
	if (from_pod)
		return lb_addr_eq(fam, &be->address, &p->saddr);
	if (scope == LB_SCOPE_INTERNAL)
		return cfg && (cfg->flags & (fam == LB_V4 ? LB_CFG_F_MASQ_CLUSTER_IP4
							  : LB_CFG_F_MASQ_CLUSTER_IP6));
	return (flags & LB_F_MASQUERADE) || !(be->flags & LB_BACKEND_F_LOCAL);
}

/* Send a new flow to backend be by DSR (LB_CFG_F_DSR_*)? Only from outside
 * to an EXTERNAL frontend, to another node's backend, on a packet with room
 * for the option (no IPv4 options of its own). */
static __always_inline int want_dsr(const struct lb_node_config *cfg, __u8 scope,
				    const struct lb_be *be, const struct lb_pkt *p, int from_pod)
{
	__u32 mode;

	if (!cfg || from_pod || scope != LB_SCOPE_EXTERNAL || (be->flags & LB_BACKEND_F_LOCAL) ||
	    p->ip_options || p->dsr)
		return 0;
	mode = p->proto == IPPROTO_TCP ? LB_CFG_F_DSR_TCP : LB_CFG_F_DSR_UDP;
	return (cfg->flags & mode) != 0;
}

/* A packet that another node's LB sent here by DSR, to a backend of ours:
 * remember that the reply (B,b -> C,c) leaves with the frontend as source,
 * if the option names a frontend this node serves too (so nobody can make
 * it send from an arbitrary address): the same EXTERNAL entry (externalIPs,
 * LB IPs), or, for another node's NodePort, this node's own NodePort on
 * that port (its entry at the node's masquerade address). */
static __always_inline void dsr_backend(int fam, const struct lb_pkt *p,
					const struct lb_node_config *cfg, __u64 now)
{
	union lb_key skey;
	union ct_key key;
	union ct_val val;
	union lb_v6addr own;
	struct lb_service *svc;

	lb_key_init(fam, &skey, &p->dsr_addr, p->dsr_port, p->proto, LB_SCOPE_EXTERNAL);
	svc = lb_service_at(fam, &skey, LB_MASTER_SLOT);
	if (!svc) {
		if (snat_addr(fam, cfg, &own) < 0)
			return;
		lb_key_init(fam, &skey, &own, p->dsr_port, p->proto, LB_SCOPE_EXTERNAL);
		svc = lb_service_at(fam, &skey, LB_MASTER_SLOT);
		if (!svc || !(svc->flags & LB_F_NODE_PORT))
			return;
	}
	ct_key(fam, &key, &p->daddr, &p->saddr, p->dport, p->sport, p->proto, LB_CT_EGRESS);
	ct_entry(fam, &val, LB_CT_F_SNAT, svc->rev_nat_id, now + ct_timeout(cfg, p->proto, 0));
	ct_entry_nat(fam, &val, 1, &p->dsr_addr, p->dsr_port);
	ct_update(fam, &key, &val);
	tc_count(LB_TC_STAT_DSR_BACKEND);
}

static __always_inline int new_flow(int fam, int at, void *ctx, struct lb_pkt *p,
				    const struct lb_node_config *cfg, __u64 now, int from_pod)
{
	union lb_key skey;
	union ct_key key;
	union ct_val val;
	struct lb_service *svc;
	struct lb_monitor *mon;
	struct lb_be be;
	__u32 backend_id;
	__u32 rev_nat_id;
	__u16 flags;
	__be16 nport = 0;
	__u8 scope;
	int masq, dsr, affinity_hit = 0;
	union lb_v6addr frontend;
	__be16 fport;
	__u64 expires;

	svc = frontend_of(fam, p, &skey, &scope, from_pod);
	if (!svc) {
		tc_count(LB_TC_STAT_PASS);
		return TC_ACT_OK;
	}
	rev_nat_id = svc->rev_nat_id;
	flags = svc->flags;

	if ((flags & LB_F_SOURCE_RANGE) && !src_range_allows(fam, rev_nat_id, &p->saddr)) {
		tc_count(LB_TC_STAT_DROP_RANGE);
		if ((mon = lb_monitor_on()))
			tc_event(fam, at, mon, p, rev_nat_id, LB_EV_DROP, 0, 0);
		return TC_ACT_SHOT;
	}
	if (svc->count == 0) {
		/* TC builds REJECT answers: hand it over before counting */
		if (at == AT_XDP && !(flags & LB_F_DROP_NO_BACKEND))
			return LB_PUNT;
		if (lb_no_backend(svc) == LB_VERDICT_DROP) {
			tc_count(LB_TC_STAT_DROP);
			if ((mon = lb_monitor_on()))
				tc_event(fam, at, mon, p, rev_nat_id, LB_EV_DROP, 0, 0);
			return TC_ACT_SHOT;
		}
		tc_count(LB_TC_STAT_REJECT);
		if ((mon = lb_monitor_on()))
			tc_event(fam, at, mon, p, rev_nat_id, LB_EV_REJECT, 0, 0);
		if (at == AT_XDP)  /* not reached (see above); keeps TC's helpers out of XDP */
			return LB_PUNT;
		return reject(fam, ctx, p);
	}

	backend_id = select_backend(fam, p, &skey, scope, svc, lb_flow_hash(p), now,
				    &affinity_hit);
	if (!backend_id || lb_backend(fam, backend_id, &be) < 0)
		goto error;
	dsr = want_dsr(cfg, scope, &be, p, from_pod);
	if (dsr && at == AT_XDP)
		return LB_PUNT;  /* TC inserts the option; nothing written yet */
	masq = !dsr && want_masq(fam, cfg, scope, flags, &be, p, from_pod);
	if (flags & LB_F_AFFINITY)
		lb_affinity_record(affinity_client(fam, p), 0, rev_nat_id, backend_id, now);

	expires = now + ct_timeout(cfg, p->proto, 0);
	if (masq) {
		union lb_v6addr naddr;

		if (snat_addr(fam, cfg, &naddr) < 0)
			goto error;
		/* reply (B,b -> N,n) at ingress: back to the client */
		ct_entry(fam, &val, LB_CT_F_DNAT, rev_nat_id, expires);
		ct_entry_nat(fam, &val, 0, &p->saddr, p->sport);
		nport = snat_reserve(fam, cfg, p, &be.address, be.port, &naddr, now, &val);
		if (!nport)
			goto error;
		/* forward (C,c -> B,b) at egress: masquerade */
		ct_key(fam, &key, &p->saddr, &be.address, p->sport, be.port, p->proto, LB_CT_EGRESS);
		ct_entry(fam, &val, LB_CT_F_SNAT, rev_nat_id, expires);
		ct_entry_nat(fam, &val, 1, &naddr, nport);
		ct_update(fam, &key, &val);
	} else {
		/* A masquerade entry of an earlier flow with the same client
		 * port and backend must not apply to this one. */
		ct_key(fam, &key, &p->saddr, &be.address, p->sport, be.port, p->proto, LB_CT_EGRESS);
		ct_delete(fam, &key);
	}
	/* reply (B,b -> C,c) at egress: leaves with the frontend as source
	 * (by DSR the backend's node does that; the reply never comes here) */
	if (!dsr) {
		ct_key(fam, &key, &be.address, &p->saddr, be.port, p->sport, p->proto,
		       LB_CT_EGRESS);
		ct_entry(fam, &val, LB_CT_F_SNAT, rev_nat_id, expires);
		ct_entry_nat(fam, &val, 1, &p->daddr, p->dport);
		ct_update(fam, &key, &val);
	}
	/* the service entry (C,c -> V,v) at ingress, written last */
	ct_key_of(fam, &key, p, LB_CT_INGRESS);
	ct_entry(fam, &val, LB_CT_F_DNAT | LB_CT_F_SERVICE | (dsr ? LB_CT_F_DSR : 0), rev_nat_id,
		 expires);
	ct_entry_nat(fam, &val, 0, &be.address, be.port);
	CT_VAL(fam, &val, backend_id) = backend_id;
	ct_update(fam, &key, &val);

	/* before the rewrite: p still holds the frontend */
	if ((mon = lb_monitor_on()))
		tc_event(fam, at, mon, p, rev_nat_id, affinity_hit ? LB_EV_AFFINITY : LB_EV_TRANSLATED,
			 backend_id, &be);
	frontend = p->daddr;
	fport = p->dport;
	if (pkt_rewrite(fam, at, ctx, p, 0, &be.address, be.port) < 0)
		goto error;
	if (dsr && lb_dsr_push(fam, ctx, p, &frontend, fport) < 0)
		goto error;
	lb_svc_count(rev_nat_id, LB_STAT_SELECTED);
	lb_count_backend(backend_id);
	tc_count(LB_TC_STAT_NEW);
	return TC_ACT_OK;
error:
	lb_svc_count(rev_nat_id, LB_STAT_ERROR);
	tc_count(LB_TC_STAT_ERROR);
	if ((mon = lb_monitor_on()))
		tc_event(fam, at, mon, p, rev_nat_id, LB_EV_NO_BACKEND, 0, 0);
	return TC_ACT_SHOT;
}

/* --------------------------------------------------------------- entries */

/* What handle() does with a packet no conntrack entry claims. */
#define SERVICES_NONE   0  /* nothing: pass it */
#define SERVICES_NETDEV 1  /* traffic entering the node: EXTERNAL frontends, ClusterIPs */
#define SERVICES_POD    2  /* from a pod: INTERNAL frontends, with LB_CFG_F_POD_LB */

static __always_inline int handle(void *ctx, int at, __u8 stage, int services)
{
	struct lb_pkt p = {};
	struct lb_node_config *cfg;
	__u64 now;
	int kind, ret;

	kind = at == AT_XDP ? lb_xdp_parse(ctx, &p) : lb_parse(ctx, &p);
	if (at == AT_XDP && kind != LB_PKT_L4)
		return LB_PUNT;
	if (kind == LB_PKT_FRAG) {
		tc_count(LB_TC_STAT_FRAGMENT);
		return TC_ACT_OK;
	}
	if (kind == LB_PKT_ICMP_ERR) {
		now = now_sec();
		if (p.l3_proto == ETH_P_IP)
			ret = ct_icmp(LB_V4, ctx, &p, stage, now);
		else
			ret = ct_icmp(LB_V6, ctx, &p, stage, now);
		if (ret > 0)
			tc_count(LB_TC_STAT_ICMP_ERROR);
		return ret < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (kind != LB_PKT_L4)
		return TC_ACT_OK;
	cfg = node_config();
	now = now_sec();
	if (p.dsr && services == SERVICES_NETDEV) {
		if (p.l3_proto == ETH_P_IP)
			dsr_backend(LB_V4, &p, cfg, now);
		else
			dsr_backend(LB_V6, &p, cfg, now);
		return TC_ACT_OK;
	}
	if (p.l3_proto == ETH_P_IP)
		ret = ct_handle(LB_V4, at, ctx, &p, stage, cfg, now);
	else
		ret = ct_handle(LB_V6, at, ctx, &p, stage, cfg, now);
	if (ret == LB_PUNT)
		return LB_PUNT;
	if (ret > 0) {
		tc_count(LB_TC_STAT_CT_HIT);
		return TC_ACT_OK;
	}
	if (ret < 0) {
		tc_count(LB_TC_STAT_ERROR);
		return TC_ACT_SHOT;
	}
	if (services == SERVICES_POD && !(cfg && (cfg->flags & LB_CFG_F_POD_LB)))
		services = SERVICES_NONE;
	if (services == SERVICES_NONE)
		return TC_ACT_OK;
	if (p.l3_proto == ETH_P_IP)
		return new_flow(LB_V4, at, ctx, &p, cfg, now, services == SERVICES_POD);
	return new_flow(LB_V6, at, ctx, &p, cfg, now, services == SERVICES_POD);
}

/* Did lb_xdp_ingress of this load finish the packet's ingress half? It
 * says so in 4 bytes of XDP metadata; a fresh mark per load, so metadata
 * that survived from elsewhere (another node's XDP, an older load) is
 * not taken for it. */
static __always_inline int xdp_done(struct __sk_buff *skb)
{
	void *meta = (void *)(long)skb->data_meta;
	void *data = (void *)(long)skb->data;

	return meta + sizeof(__u32) <= data && *(__u32 *)meta == LB_XDP_MARK;
}

int lb_netdev_ingress(struct __sk_buff *skb)
{
	if (xdp_done(skb))
		return TC_ACT_OK;
	return handle(skb, AT_TC, LB_CT_INGRESS, SERVICES_NETDEV);
}

/* LB_NO_POD_INGRESS: the agent leaves it out on a node without pod
 * interfaces. */
#ifndef LB_NO_POD_INGRESS
int lb_pod_ingress(struct __sk_buff *skb)
{
	return handle(skb, AT_TC, LB_CT_INGRESS, SERVICES_POD);
}
#endif

int lb_egress(struct __sk_buff *skb)
{
	return handle(skb, AT_TC, LB_CT_EGRESS, SERVICES_NONE);
}

/* lb_netdev_ingress at XDP, attached in front of it on node interfaces
 * (`--bpf-lb-acceleration`): the same conntrack and new-flow logic on the
 * fast-path shapes (lib/xdp_pkt.h), the rest handed to TC untouched. A
 * packet XDP finished carries LB_XDP_MARK in its metadata, so TC skips it;
 * without room for metadata XDP does nothing. */
/* LB_NO_XDP: the agent leaves it out when no interface gets XDP. */
#ifndef LB_NO_XDP
int lb_xdp_ingress(struct xdp_md *ctx)
{
	void *meta, *data;
	int ret;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(__u32)) < 0)
		return XDP_PASS;
	ret = handle(ctx, AT_XDP, LB_CT_INGRESS, SERVICES_NETDEV);
	if (ret == LB_PUNT) {
		tc_count(LB_TC_STAT_XDP_TO_TC);
		bpf_xdp_adjust_meta(ctx, sizeof(__u32));
		return XDP_PASS;
	}
	tc_count(LB_TC_STAT_XDP_DONE);
	if (ret == TC_ACT_SHOT)
		return XDP_DROP;
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if (meta + sizeof(__u32) <= data)
		*(__u32 *)meta = LB_XDP_MARK;
	return XDP_PASS;
}
#endif /* LB_NO_XDP */
