/* SPDX-License-Identifier: Apache-2.0
 *
 * North-south load balancing at TC (clsact): traffic entering the node for
 * a NodePort, externalIP or LoadBalancer frontend (services-map scope
 * EXTERNAL) is DNATed to a backend, masqueraded where the frontend says so
 * or the backend is on another node, and its replies are translated back.
 *
 * Programs (all return TC_ACT_OK unless noted):
 *   lb_netdev_ingress  node interfaces, ingress: conntrack, then new flows
 *                      to frontends (DROP -> TC_ACT_SHOT, REJECT -> the
 *                      RST / ICMP answer via TC_ACT_REDIRECT)
 *   lb_pod_ingress     host side of pod links, ingress (packets from pods):
 *                      conntrack only, so pods never open external flows
 *   lb_egress          node interfaces and pod links, egress: conntrack only
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
 * packets to addresses without an EXTERNAL frontend.
 *
 * Backend choice for a new flow: a live session-affinity entry whose
 * backend is still a member (lb_aff_match, scope EXTERNAL); else, for
 * LB_ALG_MAGLEV frontends, the service's Maglev table (lb_maglev); else
 * slot hash % count + 1 of the frontend.
 *
 * Compile-time options (-D): PIN_DIR, LB_*_MAP_MAX (see lb_types.h),
 * LB_EXPECTED_LAYOUT_VERSION, as for sock_lb.c.
 */
#include "lib/pkt.h"
#include "lib/tc_maps.h"

#define SNAT_PORT_TRIES 16  /* masquerade ports probed per new flow */
#define LB_NSEC_PER_SEC 1000000000ULL

/* Private per-CPU scratch for building REJECT answers (not pinned). */
BPF_PERCPU_ARRAY(lb_tc_scratch, struct lb_reject_buf, 1);

static __always_inline void tc_count(__u32 what)
{
	struct lb_tc_stat *s = lb_tc_stats.lookup(&what);

	if (s)
		s->packets++;
}

static __always_inline void svc_count(__u16 rev_nat_id, int no_backend, int error)
{
	__u32 idx = rev_nat_id;
	struct lb_svc_stats *s = lb_svc_stats.lookup(&idx);

	if (!s)
		return;
	if (error)
		s->errors++;
	else if (no_backend)
		s->no_backend++;
	else
		s->selected++;
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

static __always_inline __u16 pick_slot(__u32 hash, __u16 count)
{
	return (__u16)(hash % count) + 1;
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
static __always_inline __u64 affinity_client(const struct lb_pkt *p)
{
	if (p->l3_proto == ETH_P_IP)
		return p->saddr.p32[0];
	return p->saddr.p64[0] ^ p->saddr.p64[1];
}

/* The backend id a live session-affinity entry of this client names, or 0.
 * As on the socket path (sock_lb.c lb_affinity_get), the entry counts only
 * while the backend is still a member of the service's EXTERNAL view
 * (lb_aff_match): a backend that left the service is not reused. */
static __always_inline __u32 affinity_get(const struct lb_pkt *p, __u16 rev_nat_id,
					  __u32 timeout, __u64 now)
{
	struct lb_affinity_key ak = {};
	struct lb_affinity_match_key mk = {};
	struct lb_affinity_val *av;

	ak.client = affinity_client(p);
	ak.rev_nat_id = rev_nat_id;
	av = lb_affinity.lookup(&ak);
	if (!av || av->last_used + timeout < now)
		return 0;
	mk.backend_id = av->backend_id;
	mk.rev_nat_id = rev_nat_id;
	mk.scope = LB_SCOPE_EXTERNAL;
	if (!lb_aff_match.lookup(&mk))
		return 0;
	return mk.backend_id;
}

/* LB_ALG_MAGLEV: the backend id at table[hash % LB_MAGLEV_M] of the
 * service's Maglev table, or 0 when it has none (not synced yet, or an
 * empty entry): the caller then takes the hash % count slot. */
static __always_inline __u32 maglev_pick(__u16 rev_nat_id, __u32 hash)
{
	__u32 k = rev_nat_id, idx = hash % LB_MAGLEV_M;
	__u32 *id;
	void *table = lb_maglev.lookup(&k);

	if (!table)
		return 0;
	id = bpf_map_lookup_elem(table, &idx);
	return id ? *id : 0;
}

static __always_inline int reject4(struct __sk_buff *skb, const struct lb_pkt *p)
{
	__u32 zero = 0;
	struct lb_reject_buf *b = lb_tc_scratch.lookup(&zero);

	return b ? lb4_reject(skb, p, b) : TC_ACT_SHOT;
}

static __always_inline int reject6(struct __sk_buff *skb, const struct lb_pkt *p)
{
	__u32 zero = 0;
	struct lb_reject_buf *b = lb_tc_scratch.lookup(&zero);

	return b ? lb6_reject(skb, p, b) : TC_ACT_SHOT;
}

/* ------------------------------------------------------------------ IPv4 */

static __always_inline void ct4_key(struct lb4_ct_key *k, __be32 saddr, __be32 daddr,
				    __be16 sport, __be16 dport, __u8 proto, __u8 stage)
{
	k->saddr = saddr;
	k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->stage = stage;
}

static __always_inline int ct4_apply(struct __sk_buff *skb, struct lb_pkt *p,
				     const struct lb4_ct_val *v)
{
	if ((v->flags & LB_CT_F_DNAT) && lb4_rewrite(skb, p, 0, v->daddr, v->dport) < 0)
		return -1;
	if ((v->flags & LB_CT_F_SNAT) && lb4_rewrite(skb, p, 1, v->saddr, v->sport) < 0)
		return -1;
	return 0;
}

/* 1: translated by an existing entry, 0: no (usable) entry, -1: error. */
static __always_inline int ct4_handle(struct __sk_buff *skb, struct lb_pkt *p, __u8 stage,
				      const struct lb_node_config *cfg, __u64 now)
{
	struct lb4_ct_key key = {};
	struct lb4_ct_val *v;

	ct4_key(&key, p->saddr.p32[0], p->daddr.p32[0], p->sport, p->dport, p->proto, stage);
	v = lb4_ct.lookup(&key);
	if (!v || v->expires < now)
		return 0;
	if (v->flags & LB_CT_F_SERVICE) {
		__u32 id = v->backend_id;
		struct lb4_backend *be = lb4_backends.lookup(&id);

		/* The backend went away (or its id now names another): pick a
		 * new one; the new backend resets a TCP connection it does not
		 * know, which is the right outcome for the client. */
		if (!be || be->address != v->daddr || be->port != v->dport)
			return 0;
		if ((v->flags & LB_CT_F_CLOSING) && is_syn(p))
			return 0;
	}
	if (is_closing(p))
		v->flags |= LB_CT_F_CLOSING;
	v->expires = now + ct_timeout(cfg, p->proto, v->flags & LB_CT_F_CLOSING);
	if (ct4_apply(skb, p, v) < 0)
		return -1;
	return 1;
}

/* An ICMP error about a tracked flow: apply the entry without refreshing
 * it. 1: translated, 0: not ours, -1: error. */
static __always_inline int ct4_icmp(struct __sk_buff *skb, struct lb_pkt *p, __u8 stage,
				    __u64 now)
{
	struct lb4_ct_key key = {};
	struct lb4_ct_val *v;

	ct4_key(&key, p->saddr.p32[0], p->daddr.p32[0], p->sport, p->dport, p->proto, stage);
	v = lb4_ct.lookup(&key);
	if (!v || v->expires < now)
		return 0;
	if ((v->flags & LB_CT_F_DNAT) && lb4_icmp_xlate(skb, p, 1, v->daddr, v->dport) < 0)
		return -1;
	if ((v->flags & LB_CT_F_SNAT) && lb4_icmp_xlate(skb, p, 0, v->saddr, v->sport) < 0)
		return -1;
	return 1;
}

/* Choose a free masquerade port: the reply-side entry (B,b -> N,n) must be
 * unique. Returns the port (network order) or 0 when none is free. */
static __always_inline __be16 snat4_reserve(const struct lb_node_config *cfg,
					    const struct lb_pkt *p, __be32 baddr,
					    __be16 bport, __be32 naddr, __u64 now,
					    struct lb4_ct_val *reply)
{
	struct lb4_ct_key key = {};
	__u32 hash = lb_flow_hash(p);

	ct4_key(&key, baddr, naddr, bport, 0, p->proto, LB_CT_INGRESS);
#pragma unroll
	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		__be16 port = bpf_htons(snat_port(cfg, hash, i));
		struct lb4_ct_val *old;

		key.dport = port;
		if (lb4_ct.insert(&key, reply) == 0)
			return port;
		old = lb4_ct.lookup(&key);
		if (old && old->expires < now) {
			lb4_ct.update(&key, reply);
			return port;
		}
	}
	return 0;
}

static __always_inline int new_flow4(struct __sk_buff *skb, struct lb_pkt *p,
				     const struct lb_node_config *cfg, __u64 now)
{
	struct lb4_key skey = {};
	struct lb4_ct_key key = {};
	struct lb4_ct_val val = {};
	struct lb_service *svc;
	struct lb4_backend *be;
	__u32 backend_id = 0, hash;
	__u16 rev_nat_id, count, flags;
	__be32 baddr;
	__be16 bport, nport = 0;
	int masq;
	__u64 expires;

	skey.address = p->daddr.p32[0];
	skey.dport = p->dport;
	skey.proto = p->proto;
	skey.scope = LB_SCOPE_EXTERNAL;
	svc = lb4_services.lookup(&skey);
	if (!svc) {
		tc_count(LB_TC_STAT_PASS);
		return TC_ACT_OK;
	}
	rev_nat_id = svc->rev_nat_id;
	count = svc->count;
	flags = svc->flags;

	if (flags & LB_F_SOURCE_RANGE) {
		struct lb4_src_range_key rk = {};

		rk.prefixlen = LB_SRC_RANGE_PREFIX_BITS + 32;
		rk.rev_nat_id = rev_nat_id;
		rk.address = p->saddr.p32[0];
		if (!lb4_srcrange.lookup(&rk)) {
			tc_count(LB_TC_STAT_DROP_RANGE);
			return TC_ACT_SHOT;
		}
	}
	if (count == 0) {
		svc_count(rev_nat_id, 1, 0);
		if (flags & LB_F_DROP_NO_BACKEND) {
			tc_count(LB_TC_STAT_DROP);
			return TC_ACT_SHOT;
		}
		tc_count(LB_TC_STAT_REJECT);
		return reject4(skb, p);
	}

	hash = lb_flow_hash(p);
	if (flags & LB_F_AFFINITY) {
		backend_id = affinity_get(p, rev_nat_id, svc->affinity_timeout, now);
		if (backend_id && !lb4_backends.lookup(&backend_id))
			backend_id = 0;
	}
	/* A table naming a backend that is gone (mid-update): use the slot. */
	if (!backend_id && svc->algorithm == LB_ALG_MAGLEV) {
		backend_id = maglev_pick(rev_nat_id, hash);
		if (backend_id && !lb4_backends.lookup(&backend_id))
			backend_id = 0;
	}
	if (!backend_id) {
		skey.backend_slot = pick_slot(hash, count);
		svc = lb4_services.lookup(&skey);
		if (!svc)
			goto error;
		backend_id = svc->backend_id;
	}
	be = lb4_backends.lookup(&backend_id);
	if (!be)
		goto error;
	baddr = be->address;
	bport = be->port;
	/* A remote backend's reply must come back through this node. */
	masq = (flags & LB_F_MASQUERADE) || !(be->flags & LB_BACKEND_F_LOCAL);
	if (flags & LB_F_AFFINITY) {
		struct lb_affinity_key ak = {};
		struct lb_affinity_val av = {};

		ak.client = affinity_client(p);
		ak.rev_nat_id = rev_nat_id;
		av.last_used = now;
		av.backend_id = backend_id;
		lb_affinity.update(&ak, &av);
	}

	expires = now + ct_timeout(cfg, p->proto, 0);
	if (masq) {
		__be32 naddr;

		if (!cfg || !(cfg->flags & LB_CFG_F_SNAT4))
			goto error;
		naddr = cfg->snat_ip4;
		/* reply (B,b -> N,n) at ingress: back to the client */
		val.daddr = p->saddr.p32[0];
		val.dport = p->sport;
		val.flags = LB_CT_F_DNAT;
		val.rev_nat_id = rev_nat_id;
		val.expires = expires;
		nport = snat4_reserve(cfg, p, baddr, bport, naddr, now, &val);
		if (!nport)
			goto error;
		/* forward (C,c -> B,b) at egress: masquerade */
		__builtin_memset(&val, 0, sizeof(val));
		ct4_key(&key, p->saddr.p32[0], baddr, p->sport, bport, p->proto, LB_CT_EGRESS);
		val.saddr = naddr;
		val.sport = nport;
		val.flags = LB_CT_F_SNAT;
		val.rev_nat_id = rev_nat_id;
		val.expires = expires;
		lb4_ct.update(&key, &val);
	} else {
		/* A masquerade entry of an earlier flow with the same client
		 * port and backend must not apply to this one. */
		ct4_key(&key, p->saddr.p32[0], baddr, p->sport, bport, p->proto, LB_CT_EGRESS);
		lb4_ct.delete(&key);
	}
	/* reply (B,b -> C,c) at egress: leaves with the frontend as source */
	ct4_key(&key, baddr, p->saddr.p32[0], bport, p->sport, p->proto, LB_CT_EGRESS);
	__builtin_memset(&val, 0, sizeof(val));
	val.saddr = p->daddr.p32[0];
	val.sport = p->dport;
	val.flags = LB_CT_F_SNAT;
	val.rev_nat_id = rev_nat_id;
	val.expires = expires;
	lb4_ct.update(&key, &val);
	/* the service entry (C,c -> V,v) at ingress, written last */
	ct4_key(&key, p->saddr.p32[0], p->daddr.p32[0], p->sport, p->dport, p->proto,
		LB_CT_INGRESS);
	__builtin_memset(&val, 0, sizeof(val));
	val.daddr = baddr;
	val.dport = bport;
	val.backend_id = backend_id;
	val.flags = LB_CT_F_DNAT | LB_CT_F_SERVICE;
	val.rev_nat_id = rev_nat_id;
	val.expires = expires;
	lb4_ct.update(&key, &val);

	if (lb4_rewrite(skb, p, 0, baddr, bport) < 0)
		goto error;
	svc_count(rev_nat_id, 0, 0);
	tc_count(LB_TC_STAT_NEW);
	return TC_ACT_OK;
error:
	svc_count(rev_nat_id, 0, 1);
	tc_count(LB_TC_STAT_ERROR);
	return TC_ACT_SHOT;
}

/* ------------------------------------------------------------------ IPv6 */

static __always_inline void ct6_key(struct lb6_ct_key *k, const union lb_v6addr *saddr,
				    const union lb_v6addr *daddr, __be16 sport, __be16 dport,
				    __u8 proto, __u8 stage)
{
	k->saddr = *saddr;
	k->daddr = *daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->stage = stage;
}

static __always_inline int ct6_apply(struct __sk_buff *skb, struct lb_pkt *p,
				     const struct lb6_ct_val *v)
{
	if ((v->flags & LB_CT_F_DNAT) && lb6_rewrite(skb, p, 0, &v->daddr, v->dport) < 0)
		return -1;
	if ((v->flags & LB_CT_F_SNAT) && lb6_rewrite(skb, p, 1, &v->saddr, v->sport) < 0)
		return -1;
	return 0;
}

static __always_inline int ct6_handle(struct __sk_buff *skb, struct lb_pkt *p, __u8 stage,
				      const struct lb_node_config *cfg, __u64 now)
{
	struct lb6_ct_key key = {};
	struct lb6_ct_val *v;

	ct6_key(&key, &p->saddr, &p->daddr, p->sport, p->dport, p->proto, stage);
	v = lb6_ct.lookup(&key);
	if (!v || v->expires < now)
		return 0;
	if (v->flags & LB_CT_F_SERVICE) {
		__u32 id = v->backend_id;
		struct lb6_backend *be = lb6_backends.lookup(&id);

		if (!be || !lb6_addr_eq(&be->address, &v->daddr) || be->port != v->dport)
			return 0;
		if ((v->flags & LB_CT_F_CLOSING) && is_syn(p))
			return 0;
	}
	if (is_closing(p))
		v->flags |= LB_CT_F_CLOSING;
	v->expires = now + ct_timeout(cfg, p->proto, v->flags & LB_CT_F_CLOSING);
	if (ct6_apply(skb, p, v) < 0)
		return -1;
	return 1;
}

static __always_inline int ct6_icmp(struct __sk_buff *skb, struct lb_pkt *p, __u8 stage,
				    __u64 now)
{
	struct lb6_ct_key key = {};
	struct lb6_ct_val *v;

	ct6_key(&key, &p->saddr, &p->daddr, p->sport, p->dport, p->proto, stage);
	v = lb6_ct.lookup(&key);
	if (!v || v->expires < now)
		return 0;
	if ((v->flags & LB_CT_F_DNAT) && lb6_icmp_xlate(skb, p, 1, &v->daddr, v->dport) < 0)
		return -1;
	if ((v->flags & LB_CT_F_SNAT) && lb6_icmp_xlate(skb, p, 0, &v->saddr, v->sport) < 0)
		return -1;
	return 1;
}

static __always_inline __be16 snat6_reserve(const struct lb_node_config *cfg,
					    const struct lb_pkt *p,
					    const union lb_v6addr *baddr, __be16 bport,
					    const union lb_v6addr *naddr, __u64 now,
					    struct lb6_ct_val *reply)
{
	struct lb6_ct_key key = {};
	__u32 hash = lb_flow_hash(p);

	ct6_key(&key, baddr, naddr, bport, 0, p->proto, LB_CT_INGRESS);
#pragma unroll
	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		__be16 port = bpf_htons(snat_port(cfg, hash, i));
		struct lb6_ct_val *old;

		key.dport = port;
		if (lb6_ct.insert(&key, reply) == 0)
			return port;
		old = lb6_ct.lookup(&key);
		if (old && old->expires < now) {
			lb6_ct.update(&key, reply);
			return port;
		}
	}
	return 0;
}

static __always_inline int new_flow6(struct __sk_buff *skb, struct lb_pkt *p,
				     const struct lb_node_config *cfg, __u64 now)
{
	struct lb6_key skey = {};
	struct lb6_ct_key key = {};
	struct lb6_ct_val val = {};
	struct lb_service *svc;
	struct lb6_backend *be;
	union lb_v6addr baddr;
	__u32 backend_id = 0, hash;
	__u16 rev_nat_id, count, flags;
	__be16 bport, nport = 0;
	int masq;
	__u64 expires;

	skey.address = p->daddr;
	skey.dport = p->dport;
	skey.proto = p->proto;
	skey.scope = LB_SCOPE_EXTERNAL;
	svc = lb6_services.lookup(&skey);
	if (!svc) {
		tc_count(LB_TC_STAT_PASS);
		return TC_ACT_OK;
	}
	rev_nat_id = svc->rev_nat_id;
	count = svc->count;
	flags = svc->flags;

	if (flags & LB_F_SOURCE_RANGE) {
		struct lb6_src_range_key rk = {};

		rk.prefixlen = LB_SRC_RANGE_PREFIX_BITS + 128;
		rk.rev_nat_id = rev_nat_id;
		rk.address = p->saddr;
		if (!lb6_srcrange.lookup(&rk)) {
			tc_count(LB_TC_STAT_DROP_RANGE);
			return TC_ACT_SHOT;
		}
	}
	if (count == 0) {
		svc_count(rev_nat_id, 1, 0);
		if (flags & LB_F_DROP_NO_BACKEND) {
			tc_count(LB_TC_STAT_DROP);
			return TC_ACT_SHOT;
		}
		tc_count(LB_TC_STAT_REJECT);
		return reject6(skb, p);
	}

	hash = lb_flow_hash(p);
	if (flags & LB_F_AFFINITY) {
		backend_id = affinity_get(p, rev_nat_id, svc->affinity_timeout, now);
		if (backend_id && !lb6_backends.lookup(&backend_id))
			backend_id = 0;
	}
	/* A table naming a backend that is gone (mid-update): use the slot. */
	if (!backend_id && svc->algorithm == LB_ALG_MAGLEV) {
		backend_id = maglev_pick(rev_nat_id, hash);
		if (backend_id && !lb6_backends.lookup(&backend_id))
			backend_id = 0;
	}
	if (!backend_id) {
		skey.backend_slot = pick_slot(hash, count);
		svc = lb6_services.lookup(&skey);
		if (!svc)
			goto error;
		backend_id = svc->backend_id;
	}
	be = lb6_backends.lookup(&backend_id);
	if (!be)
		goto error;
	baddr = be->address;
	bport = be->port;
	masq = (flags & LB_F_MASQUERADE) || !(be->flags & LB_BACKEND_F_LOCAL);
	if (flags & LB_F_AFFINITY) {
		struct lb_affinity_key ak = {};
		struct lb_affinity_val av = {};

		ak.client = affinity_client(p);
		ak.rev_nat_id = rev_nat_id;
		av.last_used = now;
		av.backend_id = backend_id;
		lb_affinity.update(&ak, &av);
	}

	expires = now + ct_timeout(cfg, p->proto, 0);
	if (masq) {
		union lb_v6addr naddr;

		if (!cfg || !(cfg->flags & LB_CFG_F_SNAT6))
			goto error;
		naddr = cfg->snat_ip6;
		val.daddr = p->saddr;
		val.dport = p->sport;
		val.flags = LB_CT_F_DNAT;
		val.rev_nat_id = rev_nat_id;
		val.expires = expires;
		nport = snat6_reserve(cfg, p, &baddr, bport, &naddr, now, &val);
		if (!nport)
			goto error;
		__builtin_memset(&val, 0, sizeof(val));
		ct6_key(&key, &p->saddr, &baddr, p->sport, bport, p->proto, LB_CT_EGRESS);
		val.saddr = naddr;
		val.sport = nport;
		val.flags = LB_CT_F_SNAT;
		val.rev_nat_id = rev_nat_id;
		val.expires = expires;
		lb6_ct.update(&key, &val);
	} else {
		ct6_key(&key, &p->saddr, &baddr, p->sport, bport, p->proto, LB_CT_EGRESS);
		lb6_ct.delete(&key);
	}
	ct6_key(&key, &baddr, &p->saddr, bport, p->sport, p->proto, LB_CT_EGRESS);
	__builtin_memset(&val, 0, sizeof(val));
	val.saddr = p->daddr;
	val.sport = p->dport;
	val.flags = LB_CT_F_SNAT;
	val.rev_nat_id = rev_nat_id;
	val.expires = expires;
	lb6_ct.update(&key, &val);
	ct6_key(&key, &p->saddr, &p->daddr, p->sport, p->dport, p->proto, LB_CT_INGRESS);
	__builtin_memset(&val, 0, sizeof(val));
	val.daddr = baddr;
	val.dport = bport;
	val.backend_id = backend_id;
	val.flags = LB_CT_F_DNAT | LB_CT_F_SERVICE;
	val.rev_nat_id = rev_nat_id;
	val.expires = expires;
	lb6_ct.update(&key, &val);

	if (lb6_rewrite(skb, p, 0, &baddr, bport) < 0)
		goto error;
	svc_count(rev_nat_id, 0, 0);
	tc_count(LB_TC_STAT_NEW);
	return TC_ACT_OK;
error:
	svc_count(rev_nat_id, 0, 1);
	tc_count(LB_TC_STAT_ERROR);
	return TC_ACT_SHOT;
}

/* --------------------------------------------------------------- entries */

static __always_inline int handle(struct __sk_buff *skb, __u8 stage, int services)
{
	struct lb_pkt p = {};
	struct lb_node_config *cfg;
	__u64 now;
	int kind, ret;

	kind = lb_parse(skb, &p);
	if (kind == LB_PKT_FRAG) {
		tc_count(LB_TC_STAT_FRAGMENT);
		return TC_ACT_OK;
	}
	if (kind == LB_PKT_ICMP_ERR) {
		now = now_sec();
		if (p.l3_proto == ETH_P_IP)
			ret = ct4_icmp(skb, &p, stage, now);
		else
			ret = ct6_icmp(skb, &p, stage, now);
		if (ret > 0)
			tc_count(LB_TC_STAT_ICMP_ERROR);
		return ret < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (kind != LB_PKT_L4)
		return TC_ACT_OK;
	cfg = node_config();
	now = now_sec();
	if (p.l3_proto == ETH_P_IP)
		ret = ct4_handle(skb, &p, stage, cfg, now);
	else
		ret = ct6_handle(skb, &p, stage, cfg, now);
	if (ret > 0) {
		tc_count(LB_TC_STAT_CT_HIT);
		return TC_ACT_OK;
	}
	if (ret < 0) {
		tc_count(LB_TC_STAT_ERROR);
		return TC_ACT_SHOT;
	}
	if (!services)
		return TC_ACT_OK;
	if (p.l3_proto == ETH_P_IP)
		return new_flow4(skb, &p, cfg, now);
	return new_flow6(skb, &p, cfg, now);
}

int lb_netdev_ingress(struct __sk_buff *skb)
{
	return handle(skb, LB_CT_INGRESS, 1);
}

int lb_pod_ingress(struct __sk_buff *skb)
{
	return handle(skb, LB_CT_INGRESS, 0);
}

int lb_egress(struct __sk_buff *skb)
{
	return handle(skb, LB_CT_EGRESS, 0);
}
