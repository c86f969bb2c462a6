/* SPDX-License-Identifier: Apache-2.0
 *
 * The load-balancing logic both datapaths share (sock_lb.c at the socket
 * hooks, tc_nat.c at TC): frontend and backend lookups for either address
 * family, the slot pick, session affinity, the per-service counters and
 * the verdict when a frontend has no backend.
 *
 * Two rules shape this file:
 *  - BCC turns map calls (m.lookup()) into map access only where the map
 *    name is written out in the main file: never in a header, never in a
 *    macro expansion. So nothing here names a map; it calls the typed
 *    accessors declared below, which every main file that includes this
 *    header defines, one line each, next to its own maps.
 *  - Family-independent code takes the family as its first argument
 *    (LB_V4 or LB_V6, a constant at every call) and addresses as union
 *    lb_v6addr with IPv4 in p32[0], as struct lb_pkt has them. After
 *    inlining clang folds the family tests away, so each program keeps
 *    only the code of the family it runs; what really differs per family
 *    (map keys and values, checksums) stays in small if/else helpers.
 */
#ifndef PYAGENT_LIB_LB_H
#define PYAGENT_LIB_LB_H

#include "lb_types.h"

/* ---- map accessors: defined by the main file (see above) */
static __always_inline struct lb_service *lb4_services_get(struct lb4_key *k);
static __always_inline struct lb_service *lb6_services_get(struct lb6_key *k);
static __always_inline struct lb4_backend *lb4_backends_get(__u32 *id);
static __always_inline struct lb6_backend *lb6_backends_get(__u32 *id);
static __always_inline struct lb_svc_stats *lb_svc_stats_get(__u32 *rev_nat_id);
static __always_inline __u64 *lb_be_stats_get(__u32 *backend_id);
static __always_inline struct lb_affinity_val *lb_affinity_get(struct lb_affinity_key *k);
static __always_inline void lb_affinity_put(struct lb_affinity_key *k, struct lb_affinity_val *v);
static __always_inline __u8 *lb_aff_match_get(struct lb_affinity_match_key *k);
static __always_inline struct lb_monitor *lb_monitor_get(void);
static __always_inline void *lb_mon_ring_get(__u32 slot);

/* ---- frontends and backends of either family */

/* A services-map key of either family. */
union lb_key {
	struct lb4_key v4;
	struct lb6_key v6;
};

/* A backend as the datapaths use it, copied out of either family's entry. */
struct lb_be {
	union lb_v6addr address;  /* IPv4 in p32[0] */
	__be16 port;
	__u8 flags;               /* LB_BACKEND_F_* */
	__u8 pad;
};

static __always_inline int lb_addr_eq(int fam, const union lb_v6addr *a, const union lb_v6addr *b)
{
	if (fam == LB_V4)
		return a->p32[0] == b->p32[0];
	return a->p64[0] == b->p64[0] && a->p64[1] == b->p64[1];
}

/* dst := src; an IPv4 address copies p32[0] alone. */
static __always_inline void lb_addr_copy(int fam, union lb_v6addr *dst, const union lb_v6addr *src)
{
	if (fam == LB_V4)
		dst->p32[0] = src->p32[0];
	else
		*dst = *src;
}

/* key := frontend (addr, port, proto, scope), slot 0, every byte set. */
static __always_inline void lb_key_init(int fam, union lb_key *key, const union lb_v6addr *addr,
					__be16 port, __u8 proto, __u8 scope)
{
	if (fam == LB_V4) {
		key->v4.address = addr->p32[0];
		key->v4.dport = port;
		key->v4.backend_slot = LB_MASTER_SLOT;
		key->v4.proto = proto;
		key->v4.scope = scope;
		key->v4.pad[0] = key->v4.pad[1] = 0;
	} else {
		key->v6.address = *addr;
		key->v6.dport = port;
		key->v6.backend_slot = LB_MASTER_SLOT;
		key->v6.proto = proto;
		key->v6.scope = scope;
		key->v6.pad[0] = key->v6.pad[1] = 0;
	}
}

/* (addr, port) := key's frontend. */
static __always_inline void lb_key_frontend(int fam, const union lb_key *key,
					    union lb_v6addr *addr, __be16 *port)
{
	if (fam == LB_V4) {
		addr->p32[0] = key->v4.address;
		*port = key->v4.dport;
	} else {
		*addr = key->v6.address;
		*port = key->v6.dport;
	}
}

/* The services entry at slot of key's frontend (LB_MASTER_SLOT: the master). */
static __always_inline struct lb_service *lb_service_at(int fam, union lb_key *key, __u16 slot)
{
	if (fam == LB_V4) {
		key->v4.backend_slot = slot;
		return lb4_services_get(&key->v4);
	}
	key->v6.backend_slot = slot;
	return lb6_services_get(&key->v6);
}

/* The backend id in slot, 0 when the slot is missing (maps mid-update). */
static __always_inline __u32 lb_slot_backend(int fam, union lb_key *key, __u16 slot)
{
	struct lb_service *s = lb_service_at(fam, key, slot);

	return s ? s->backend_id : 0;
}

static __always_inline int lb_backend_exists(int fam, __u32 id)
{
	if (fam == LB_V4)
		return lb4_backends_get(&id) != 0;
	return lb6_backends_get(&id) != 0;
}

/* be := backend id; -1 when there is no such backend. */
static __always_inline int lb_backend(int fam, __u32 id, struct lb_be *be)
{
	if (fam == LB_V4) {
		struct lb4_backend *b = lb4_backends_get(&id);

		if (!b)
			return -1;
		be->address.p32[0] = b->address;
		be->port = b->port;
		be->flags = b->flags;
		return 0;
	}
	struct lb6_backend *b = lb6_backends_get(&id);

	if (!b)
		return -1;
	be->address = b->address;
	be->port = b->port;
	be->flags = b->flags;
	return 0;
}

/* Slot 1..count for a seed (random, hash, cookie or round-robin position). */
static __always_inline __u16 lb_slot(__u32 seed, __u16 count)
{
	return (__u16)(seed % count) + 1;
}

/* ---- counters and verdicts */

#define LB_STAT_SELECTED   0
#define LB_STAT_NO_BACKEND 1
#define LB_STAT_ERROR      2

static __always_inline void lb_svc_count(__u32 rev_nat_id, int what)
{
	__u32 idx = rev_nat_id;
	struct lb_svc_stats *s = lb_svc_stats_get(&idx);

	if (!s)
		return;
	if (what == LB_STAT_SELECTED)
		s->selected++;
	else if (what == LB_STAT_NO_BACKEND)
		s->no_backend++;
	else
		s->errors++;
}

/* New connections per backend id (both paths: a socket's connect or first
 * datagram, a TC flow's conntrack creation). */
static __always_inline void lb_count_backend(__u32 backend_id)
{
	__u64 *n = lb_be_stats_get(&backend_id);

	if (n)
		(*n)++;
}

/* A frontend without backends (count == 0): kube-proxy's REJECT when there
 * are no endpoints at all, DROP when endpoints exist but none fit the
 * traffic policy. Counted here; each datapath turns it into its answer. */
#define LB_VERDICT_REJECT 1
#define LB_VERDICT_DROP   2

static __always_inline int lb_no_backend(const struct lb_service *svc)
{
	lb_svc_count(svc->rev_nat_id, LB_STAT_NO_BACKEND);
	return svc->flags & LB_F_DROP_NO_BACKEND ? LB_VERDICT_DROP : LB_VERDICT_REJECT;
}

/* ---- session affinity (LB_F_AFFINITY frontends) */

/* The backend a live affinity entry of client names, or 0. The entry
 * counts only while that backend is still a member of the frontend's scope
 * (lb_aff_match): a backend that left the service is never reused. client
 * is the netns cookie on the socket path (netns = 1), the client address
 * on the TC path. */
static __always_inline __u32 lb_affinity_backend(__u64 client, __u8 netns, __u32 rev_nat_id,
						 __u8 scope, __u32 timeout, __u64 now)
{
	struct lb_affinity_key ak = {};
	struct lb_affinity_match_key mk = {};
	struct lb_affinity_val *av;

	ak.client = client;
	ak.rev_nat_id = rev_nat_id;
	ak.netns = netns;
	av = lb_affinity_get(&ak);
	if (!av || now - av->last_used > timeout)
		return 0;
	mk.backend_id = av->backend_id;
	mk.rev_nat_id = rev_nat_id;
	mk.scope = scope;
	if (!lb_aff_match_get(&mk))
		return 0;
	return mk.backend_id;
}

static __always_inline void lb_affinity_record(__u64 client, __u8 netns, __u32 rev_nat_id,
					       __u32 backend_id, __u64 now)
{
	struct lb_affinity_key ak = {};
	struct lb_affinity_val av = {};

	ak.client = client;
	ak.rev_nat_id = rev_nat_id;
	ak.netns = netns;
	av.last_used = now;
	av.backend_id = backend_id;
	lb_affinity_put(&ak, &av);
}

/* ---- decision events (`pyagent monitor`, see lb_types.h) */

/* -D LB_MONITOR=0 builds the programs without any event code: the
 * baseline of tests/bench/bench_monitor.py. */
#ifndef LB_MONITOR
#define LB_MONITOR 1
#endif

/* The listener state, or 0 when nobody listens: the only cost of events
 * then. Callers build an event only behind a non-zero answer. */
static __always_inline struct lb_monitor *lb_monitor_on(void)
{
	struct lb_monitor *m;

	if (!LB_MONITOR)
		return 0;
	m = lb_monitor_get();

	return m && m->mask ? m : 0;
}

static __always_inline void lb_mon_send(struct lb_monitor *m, __u32 mask, __u32 slot,
					struct lb_event *ev)
{
	void *ring;

	if (!(mask & (1U << slot)))
		return;
	ring = lb_mon_ring_get(slot);
	if (!ring || bpf_ringbuf_output(ring, ev, sizeof(*ev), 0) < 0)
		__sync_fetch_and_add(&m->lost, 1);
}

/* ev (frontend, backend, verdict... set by the caller) to every listener.
 * Written out per slot: LB_MONITOR_SLOTS is 4. */
static __always_inline void lb_mon_emit(struct lb_monitor *m, struct lb_event *ev)
{
	__u32 mask = m->mask;

	ev->time_ns = bpf_ktime_get_ns();
	lb_mon_send(m, mask, 0, ev);
	lb_mon_send(m, mask, 1, ev);
	lb_mon_send(m, mask, 2, ev);
	lb_mon_send(m, mask, 3, ev);
}

/* ev := a decision about frontend (addr, port) of family fam; backend
 * and client fields are zero until the caller sets them. */
static __always_inline void lb_ev_init(int fam, struct lb_event *ev, __u8 origin, __u8 proto,
				       const union lb_v6addr *addr, __be16 port,
				       __u32 rev_nat_id, __u8 verdict)
{
	__builtin_memset(ev, 0, sizeof(*ev));
	lb_addr_copy(fam, &ev->frontend, addr);
	ev->frontend_port = port;
	ev->rev_nat_id = rev_nat_id;
	ev->family = fam;
	ev->proto = proto;
	ev->verdict = verdict;
	ev->origin = origin;
}

static __always_inline void lb_ev_backend(int fam, struct lb_event *ev, __u32 backend_id,
					  const struct lb_be *be)
{
	ev->backend_id = backend_id;
	lb_addr_copy(fam, &ev->backend, &be->address);
	ev->backend_port = be->port;
}

#endif /* PYAGENT_LIB_LB_H */
