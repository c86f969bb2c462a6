/* SPDX-License-Identifier: Apache-2.0
 *
 * Socket-level load balancing (cgroup sock_addr hooks): connect() and
 * sendmsg() to a service VIP are rewritten to a backend before any packet
 * exists, and recvmsg()/getpeername() show the VIP again.
 *
 * Compile-time options (-D): PIN_DIR (required, string literal), the
 * LB_*_MAP_MAX capacities from lb_types.h, LB_EXPECTED_LAYOUT_VERSION, and
 * the kernel's features as probed at start (ebpf/probe.py; 1 when absent):
 *   LB_HAVE_SET_RETVAL    bpf_set_retval (5.18); without it a refused
 *                         connect()/sendmsg() fails with EPERM
 *   LB_HAVE_NETNS_COOKIE  bpf_get_netns_cookie; without it no ClientIP
 *                         affinity at these hooks (the pick is random) and
 *                         no scope (lb_sock_cfg): every socket is translated
 *   LB_HAVE_SOCK_RELEASE  the sock_release hook and socket storage; without
 *                         them least-conn picks at random here
 *
 * Return values: connect/sendmsg hooks return 1 to let the syscall go on
 * (rewritten or not) and 0 after bpf_set_retval(-errno) to fail it with that
 * errno; recvmsg/getpeername hooks must return 1.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/errno.h>

#include "lib/maps.h"
#include "lib/lb.h"

#ifndef LB_HAVE_SET_RETVAL
#define LB_HAVE_SET_RETVAL 1
#endif
#ifndef LB_HAVE_NETNS_COOKIE
#define LB_HAVE_NETNS_COOKIE 1
#endif
#ifndef LB_HAVE_SOCK_RELEASE
#define LB_HAVE_SOCK_RELEASE 1
#endif

/* Map access for lib/lb.h and this file: BCC rewrites map calls only
 * here. Cost per connect()/sendmsg(): three hash lookups (master, slot,
 * backend), one LRU update, one per-CPU counter, no loops. */
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

/* BCC 0.26 declares bpf_get_socket_cookie() as returning u32; the helper
 * returns the full 64-bit cookie. */
static __u64 (*lb_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* The client's network namespace: the affinity key at these hooks. */
static __always_inline __u64 lb_netns_cookie(struct bpf_sock_addr *ctx)
{
#if LB_HAVE_NETNS_COOKIE
	return bpf_get_netns_cookie(ctx);
#else
	return 0;  /* unused: affinity is off without the helper */
#endif
}

/* lb_xlate() results; negative values are errnos that fail the syscall. */
#define LB_UNTOUCHED  0
#define LB_TRANSLATED 1

/* Endpoints exist but none fit the traffic policy: behave like a drop. A
 * socket hook cannot hold connect() until a retransmit timeout without
 * sending packets, so report the outcome a dropped SYN eventually gives
 * (ETIMEDOUT), at once, and distinct from the ECONNREFUSED of "no endpoints". */
#define LB_ERR_DROP       ETIMEDOUT
#define LB_ERR_REJECT     ECONNREFUSED
/* Master entry without its slot or backend: maps are mid-update or broken. */
#define LB_ERR_INCONSISTENT EHOSTUNREACH

/* ::ffff:0:0/96 as the third 32-bit word, in network order. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LB_V4MAPPED_P32 0xffff0000U
#else
#define LB_V4MAPPED_P32 0x0000ffffU
#endif

/* The seed of the slot pick. UDP: the socket cookie, so every datagram of
 * one socket goes to the same backend, whatever the algorithm. TCP:
 * random, or round-robin (a per-CPU position per service). least-conn is
 * chosen by lb_least_conn, which looks the slots up. */
static __always_inline __u32 lb_pick_seed(__u64 cookie, __u8 proto, __u8 algorithm,
					  __u32 rev_nat_id)
{
	if (proto == IPPROTO_UDP)
		return (__u32)cookie;
	if (algorithm == LB_ALG_ROUND_ROBIN) {
		__u32 idx = rev_nat_id;
		__u32 *pos = lb_rr.lookup(&idx);

		return pos ? (*pos)++ : 0;
	}
	return bpf_get_prandom_u32();
}

static __always_inline __u64 lb_conns(__u32 backend_id)
{
	__u64 *n = lb_be_conns.lookup(&backend_id);

	return n ? *n : 0;
}

/* A least-conn TCP socket counts against its backend until sock_release. */
static __always_inline void lb_conn_open(struct bpf_sock_addr *ctx, __u32 backend_id)
{
	__u32 *owner = lb_sk_backend.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u64 one = 1, *n;

	if (!owner)
		return;
	if (*owner) {  /* connect() again on the same socket: move its count */
		n = lb_be_conns.lookup(owner);
		if (n && *n)
			__sync_fetch_and_add(n, -1);
	}
	*owner = backend_id;
	n = lb_be_conns.lookup(&backend_id);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		lb_be_conns.update(&backend_id, &one);
}

int lb_sock_release(struct bpf_sock *sk)
{
	__u32 *owner = lb_sk_backend.sk_storage_get(sk, 0, 0);
	__u64 *n;

	if (owner && *owner) {
		n = lb_be_conns.lookup(owner);
		if (n && *n)
			__sync_fetch_and_add(n, -1);
	}
	return 1;
}

static __always_inline void lb_lc_step(int fam, union lb_key *key, __u32 i, __u32 start,
				       __u16 count, __u32 *best, __u64 *best_n)
{
	__u32 id;
	__u64 n;

	if (i >= count)
		return;
	id = lb_slot_backend(fam, key, lb_slot(start + i, count));
	if (!id)
		return;
	n = lb_conns(id);
	if (n < *best_n) {
		*best_n = n;
		*best = id;
	}
}

/* least-conn: the slot whose backend has the fewest live connections,
 * scanning from a random slot so that ties spread. */
static __always_inline __u32 lb_least_conn(int fam, union lb_key *key, __u16 count)
{
	__u32 start = bpf_get_prandom_u32(), best = 0;
	__u64 best_n = ~0ULL;

	if (count > LB_LC_SCAN_MAX) {  /* power of two (distinct) choices */
		__u32 first = start % count, other;

		best = lb_slot_backend(fam, key, (__u16)first + 1);
		if (!best)
			return 0;
		other = lb_slot_backend(fam, key,
					lb_slot(first + 1 + bpf_get_prandom_u32() % (count - 1), count));
		if (!other)
			return best;
		return lb_conns(other) < lb_conns(best) ? other : best;
	}
	/* Written out, not a loop: clang leaves such a loop rolled in a shape
	 * whose counter the verifier cannot bound. LB_LC_SCAN_MAX steps. */
	lb_lc_step(fam, key, 0, start, count, &best, &best_n);
	lb_lc_step(fam, key, 1, start, count, &best, &best_n);
	lb_lc_step(fam, key, 2, start, count, &best, &best_n);
	lb_lc_step(fam, key, 3, start, count, &best, &best_n);
	return best;
}

/* Remember which VIP a socket meant, for recvmsg()/getpeername(). */
static __always_inline void lb_sockrev_put(int fam, __u64 cookie, const struct lb_be *be,
					   const union lb_v6addr *vip, __be16 vport,
					   __u32 rev_nat_id)
{
	if (fam == LB_V4) {
		struct lb4_sock_key k = {};
		struct lb4_sock_val v = {};

		k.cookie = cookie;
		k.address = be->address.p32[0];
		k.port = be->port;
		v.address = vip->p32[0];
		v.port = vport;
		v.rev_nat_id = rev_nat_id;
		lb4_sockrev.update(&k, &v);
	} else {
		struct lb6_sock_key k = {};
		struct lb6_sock_val v = {};

		k.cookie = cookie;
		k.address = be->address;
		k.port = be->port;
		v.address = *vip;
		v.port = vport;
		v.rev_nat_id = rev_nat_id;
		lb6_sockrev.update(&k, &v);
	}
}

/* A socket rev-NAT key of either family. */
union lb_sock_key {
	struct lb4_sock_key v4;
	struct lb6_sock_key v6;
};

/* The frontend a socket connected to backend (addr, port) meant: 0 with
 * svc_key set to its master entry and *rev_nat_id to the id it had, or -1
 * when the socket has no entry; key is left set for lb_sockrev_delete. */
static __always_inline int lb_sockrev_get(int fam, union lb_sock_key *key, __u64 cookie,
					  const union lb_v6addr *addr, __be16 port, __u8 proto,
					  union lb_key *svc_key, __u32 *rev_nat_id)
{
	if (fam == LB_V4) {
		struct lb4_sock_val *v;

		key->v4.cookie = cookie;
		key->v4.address = addr->p32[0];
		key->v4.port = port;
		key->v4.pad = 0;
		v = lb4_sockrev.lookup(&key->v4);
		if (!v)
			return -1;
		__builtin_memset(&svc_key->v4, 0, sizeof(svc_key->v4));
		svc_key->v4.address = v->address;
		svc_key->v4.dport = v->port;
		svc_key->v4.proto = proto;
		svc_key->v4.scope = LB_SCOPE_INTERNAL;
		*rev_nat_id = v->rev_nat_id;
		return 0;
	}
	struct lb6_sock_val *v;

	key->v6.cookie = cookie;
	key->v6.address = *addr;
	key->v6.port = port;
	key->v6.pad = 0;
	key->v6.pad2 = 0;
	v = lb6_sockrev.lookup(&key->v6);
	if (!v)
		return -1;
	__builtin_memset(&svc_key->v6, 0, sizeof(svc_key->v6));
	svc_key->v6.address = v->address;
	svc_key->v6.dport = v->port;
	svc_key->v6.proto = proto;
	svc_key->v6.scope = LB_SCOPE_INTERNAL;
	*rev_nat_id = v->rev_nat_id;
	return 0;
}

static __always_inline void lb_sockrev_delete(int fam, union lb_sock_key *key)
{
	if (fam == LB_V4)
		lb4_sockrev.delete(&key->v4);
	else
		lb6_sockrev.delete(&key->v6);
}

/* Translate a connect()/sendmsg() destination (addr, port) of family fam:
 * LB_UNTOUCHED, LB_TRANSLATED (addr and port now name the backend) or a
 * negative errno that fails the syscall. */
static __always_inline int lb_xlate(int fam, struct bpf_sock_addr *ctx, __u64 cookie,
				    __u8 proto, union lb_v6addr *addr, __be16 *port)
{
	union lb_key key;
	struct lb_service *svc;
	struct lb_monitor *mon;
	struct lb_be be = {};
	__u32 backend_id = 0;
	__u32 rev_nat_id;
	__u16 flags = 0;
	__u64 now = 0;
	__u8 alg = 0, verdict;
	int ret;

	lb_key_init(fam, &key, addr, *port, proto, LB_SCOPE_INTERNAL);
	svc = lb_service_at(fam, &key, LB_MASTER_SLOT);
	if (!svc)
		return LB_UNTOUCHED;
	rev_nat_id = svc->rev_nat_id;
	if (svc->count == 0) {
		if (lb_no_backend(svc) == LB_VERDICT_DROP) {
			verdict = LB_EV_DROP;
			ret = -LB_ERR_DROP;
		} else {
			verdict = LB_EV_REJECT;
			ret = -LB_ERR_REJECT;
		}
		goto out;
	}
	flags = svc->flags;
	alg = svc->algorithm;
	if (!LB_HAVE_NETNS_COOKIE)
		flags &= ~LB_F_AFFINITY;
	if (!LB_HAVE_SOCK_RELEASE && alg == LB_ALG_LEAST_CONN)
		alg = LB_ALG_RANDOM;

	verdict = LB_EV_TRANSLATED;
	if (flags & LB_F_AFFINITY) {
		now = bpf_ktime_get_ns() / 1000000000ULL;
		backend_id = lb_affinity_backend(lb_netns_cookie(ctx), 1, rev_nat_id,
						 LB_SCOPE_INTERNAL, svc->affinity_timeout, now);
		if (backend_id)
			verdict = LB_EV_AFFINITY;
	}
	if (!backend_id) {
		if (proto == IPPROTO_TCP && alg == LB_ALG_LEAST_CONN)
			backend_id = lb_least_conn(fam, &key, svc->count);
		else
			backend_id = lb_slot_backend(fam, &key,
						     lb_slot(lb_pick_seed(cookie, proto, alg,
									  rev_nat_id), svc->count));
		if (!backend_id)
			goto inconsistent;
	}
	if (lb_backend(fam, backend_id, &be) < 0)
		goto inconsistent;

	lb_sockrev_put(fam, cookie, &be, addr, *port, rev_nat_id);
	ret = LB_TRANSLATED;
	goto out;
inconsistent:
	lb_svc_count(rev_nat_id, LB_STAT_ERROR);
	verdict = LB_EV_NO_BACKEND;
	ret = -LB_ERR_INCONSISTENT;
out:
	/* One event site for every outcome, before addr is rewritten. */
	mon = lb_monitor_on();
	if (mon) {
		struct lb_event ev;

		lb_ev_init(fam, &ev, LB_EV_FROM_SOCK, proto, addr, *port, rev_nat_id, verdict);
		ev.netns_cookie = lb_netns_cookie(ctx);
		if (ret == LB_TRANSLATED)
			lb_ev_backend(fam, &ev, backend_id, &be);
		lb_mon_emit(mon, &ev);
	}
	if (ret != LB_TRANSLATED)
		return ret;
	lb_addr_copy(fam, addr, &be.address);
	*port = be.port;
	lb_svc_count(rev_nat_id, LB_STAT_SELECTED);
	lb_count_backend(backend_id);
	if (flags & LB_F_AFFINITY)
		lb_affinity_record(lb_netns_cookie(ctx), 1, rev_nat_id, backend_id, now);
#if LB_HAVE_SOCK_RELEASE
	if (proto == IPPROTO_TCP && alg == LB_ALG_LEAST_CONN)
		lb_conn_open(ctx, backend_id);
#endif
	return LB_TRANSLATED;
}

/* Backend -> VIP for a socket, only while the service still exists with the
 * id recorded at connect time (ids are reused after a service is deleted). */
static __always_inline int lb_restore(int fam, __u64 cookie, __u8 proto, union lb_v6addr *addr,
				      __be16 *port)
{
	union lb_sock_key skey;
	union lb_key key;
	struct lb_service *svc;
	__u32 rev_nat_id;

	if (lb_sockrev_get(fam, &skey, cookie, addr, *port, proto, &key, &rev_nat_id) < 0)
		return LB_UNTOUCHED;
	svc = lb_service_at(fam, &key, LB_MASTER_SLOT);
	if (!svc || svc->rev_nat_id != rev_nat_id) {
		lb_sockrev_delete(fam, &skey);
		return LB_UNTOUCHED;
	}
	lb_key_frontend(fam, &key, addr, port);
	return LB_TRANSLATED;
}

static __always_inline int lb6_is_v4mapped(const union lb_v6addr *a)
{
	return a->p32[0] == 0 && a->p32[1] == 0 && a->p32[2] == LB_V4MAPPED_P32;
}


#define SYS_PROCEED 1
#define SYS_REJECT  0

/* Without bpf_set_retval a refused syscall fails with EPERM: still at
 * once, and still an error the application sees. */
static __always_inline int sys_result(int ret)
{
	if (ret >= 0)
		return SYS_PROCEED;
#if LB_HAVE_SET_RETVAL
	bpf_set_retval(ret);
#endif
	return SYS_REJECT;
}

/* Is this socket outside the socket LB's scope (lb_sock_cfg)? One array
 * lookup (inlined by the verifier) while the scope is "every socket". */
static __always_inline int lb_sock_skipped(struct bpf_sock_addr *ctx)
{
#if LB_HAVE_NETNS_COOKIE
	__u32 k = LB_SOCK_CFG_KEY;
	struct lb_sock_config *cfg = lb_sock_cfg.lookup(&k);
	__u64 netns, host;

	if (!cfg || !cfg->flags)
		return 0;
	netns = bpf_get_netns_cookie(ctx);
	if (cfg->flags & LB_SOCK_F_HOST_NS_ONLY) {
		host = cfg->host_netns_cookie ? cfg->host_netns_cookie
					      : bpf_get_netns_cookie(NULL);
		if (netns != host)
			return 1;
	}
	return (cfg->flags & LB_SOCK_F_SKIP_LIST) && lb_sock_skip.lookup(&netns);
#else
	return 0;
#endif
}

/* connect()/sendmsg() translate, recvmsg()/getpeername() restore. A skipped
 * socket has no socket rev-NAT entry, so its restores change nothing. */
static __always_inline int sock_op(int fam, int restore, struct bpf_sock_addr *ctx,
				   union lb_v6addr *addr, __be16 *port)
{
	__u64 cookie = lb_socket_cookie(ctx);
	__u8 proto = (__u8)ctx->protocol;

	if (restore)
		return lb_restore(fam, cookie, proto, addr, port);
	if (lb_sock_skipped(ctx))
		return LB_UNTOUCHED;
	return lb_xlate(fam, ctx, cookie, proto, addr, port);
}

/* IPv4 sockets */

static __always_inline int sock4(struct bpf_sock_addr *ctx, int restore)
{
	union lb_v6addr addr;
	__be16 port = (__be16)ctx->user_port;
	int ret;

	addr.p32[0] = ctx->user_ip4;
	ret = sock_op(LB_V4, restore, ctx, &addr, &port);
	if (ret == LB_TRANSLATED) {
		ctx->user_ip4 = addr.p32[0];
		ctx->user_port = port;
	}
	return restore ? SYS_PROCEED : sys_result(ret);
}

int lb4_connect(struct bpf_sock_addr *ctx)
{
	return sock4(ctx, 0);
}

int lb4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4(ctx, 0);
}

int lb4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4(ctx, 1);
}

int lb4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4(ctx, 1);
}

/* IPv6 sockets. A v4-mapped destination (::ffff:a.b.c.d) on a dual-stack
 * socket is looked up in the IPv4 maps: the v6 hooks see it for connect()
 * (TCP and UDP), recvmsg() and getpeername(); an unconnected UDP sendmsg()
 * to a mapped address runs the IPv4 sendmsg hook instead. */

static __always_inline void ctx_get_ip6(struct bpf_sock_addr *ctx, union lb_v6addr *a)
{
	a->p32[0] = ctx->user_ip6[0];
	a->p32[1] = ctx->user_ip6[1];
	a->p32[2] = ctx->user_ip6[2];
	a->p32[3] = ctx->user_ip6[3];
}

static __always_inline void ctx_set_ip6(struct bpf_sock_addr *ctx, const union lb_v6addr *a)
{
	ctx->user_ip6[0] = a->p32[0];
	ctx->user_ip6[1] = a->p32[1];
	ctx->user_ip6[2] = a->p32[2];
	ctx->user_ip6[3] = a->p32[3];
}

static __always_inline int sock6(struct bpf_sock_addr *ctx, int restore)
{
	union lb_v6addr addr;
	__be16 port = (__be16)ctx->user_port;
	int ret;

	ctx_get_ip6(ctx, &addr);
	if (lb6_is_v4mapped(&addr)) {
		union lb_v6addr addr4;

		addr4.p32[0] = addr.p32[3];
		ret = sock_op(LB_V4, restore, ctx, &addr4, &port);
		if (ret == LB_TRANSLATED) {
			ctx->user_ip6[3] = addr4.p32[0];
			ctx->user_port = port;
		}
	} else {
		ret = sock_op(LB_V6, restore, ctx, &addr, &port);
		if (ret == LB_TRANSLATED) {
			ctx_set_ip6(ctx, &addr);
			ctx->user_port = port;
		}
	}
	return restore ? SYS_PROCEED : sys_result(ret);
}

int lb6_connect(struct bpf_sock_addr *ctx)
{
	return sock6(ctx, 0);
}

int lb6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6(ctx, 0);
}

int lb6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6(ctx, 1);
}

int lb6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6(ctx, 1);
}
