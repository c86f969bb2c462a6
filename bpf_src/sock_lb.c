/* SPDX-License-Identifier: Apache-2.0
 *
 * Socket-level load balancing (cgroup sock_addr hooks): connect() and
 * sendmsg() to a service VIP are rewritten to a backend before any packet
 * exists, and recvmsg()/getpeername() show the VIP again.
 *
 * Compile-time options (-D): PIN_DIR (required, string literal), the
 * LB_*_MAP_MAX capacities from lb_types.h, LB_EXPECTED_LAYOUT_VERSION.
 *
 * Return values: connect/sendmsg hooks return 1 to let the syscall go on
 * (rewritten or not) and 0 after bpf_set_retval(-errno) to fail it with that
 * errno; recvmsg/getpeername hooks must return 1.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/errno.h>

#include "lib/maps.h"

/* BCC rewrites map calls (m.lookup()) in this file only, not in headers:
 * every map access lives here. Cost per connect()/sendmsg(): three hash
 * lookups (master, slot, backend), one LRU update, one per-CPU counter, no
 * loops. Address-family code works on plain values (address, port) so the
 * IPv6 hooks reuse the IPv4 path for v4-mapped addresses. */

/* BCC 0.26 declares bpf_get_socket_cookie() as returning u32; the helper
 * returns the full 64-bit cookie. */
static __u64 (*lb_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* lb*_xlate() results; negative values are errnos that fail the syscall. */
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

#define LB_STAT_SELECTED   0
#define LB_STAT_NO_BACKEND 1
#define LB_STAT_ERROR      2

/* ::ffff:0:0/96 as the third 32-bit word, in network order. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LB_V4MAPPED_P32 0xffff0000U
#else
#define LB_V4MAPPED_P32 0x0000ffffU
#endif

static __always_inline void lb_count(__u16 rev_nat_id, int what)
{
	__u32 idx = rev_nat_id;
	struct lb_svc_stats *s = lb_svc_stats.lookup(&idx);

	if (!s)
		return;
	if (what == LB_STAT_SELECTED)
		s->selected++;
	else if (what == LB_STAT_NO_BACKEND)
		s->no_backend++;
	else
		s->errors++;
}

static __always_inline void lb_count_backend(__u32 backend_id)
{
	__u64 *n = lb_be_stats.lookup(&backend_id);

	if (n)
		(*n)++;
}

static __always_inline int lb_no_backend(const struct lb_service *svc)
{
	lb_count(svc->rev_nat_id, LB_STAT_NO_BACKEND);
	return svc->flags & LB_F_DROP_NO_BACKEND ? -LB_ERR_DROP : -LB_ERR_REJECT;
}

/* Slot 1..count. UDP: from the socket cookie, so every datagram of one
 * socket goes to the same backend, whatever the algorithm. TCP: random, or
 * round-robin (a per-CPU position per service). least-conn is chosen by the
 * family-specific code, which can look the slots up. */
static __always_inline __u16 lb_pick_slot(__u64 cookie, __u8 proto,
					  const struct lb_service *svc, __u16 rev_nat_id)
{
	__u32 seed;

	if (proto == IPPROTO_UDP) {
		seed = (__u32)cookie;
	} else if (svc->algorithm == LB_ALG_ROUND_ROBIN) {
		__u32 idx = rev_nat_id;
		__u32 *pos = lb_rr.lookup(&idx);

		if (!pos)
			return 1;
		seed = (*pos)++;
	} else {
		seed = bpf_get_prandom_u32();
	}
	return (__u16)(seed % svc->count) + 1;
}

static __always_inline __u64 lb_conns(__u32 backend_id)
{
	__u64 *n = lb_be_conns.lookup(&backend_id);

	return n ? *n : 0;
}

/* The affinity entry's backend, if it is recent and still in the service. */
static __always_inline __u32 lb_affinity_get(struct bpf_sock_addr *ctx,
					     const struct lb_service *svc,
					     __u16 rev_nat_id, __u64 now)
{
	struct lb_affinity_key akey = {};
	struct lb_affinity_match_key mkey = {};
	struct lb_affinity_val *aval;

	akey.client = bpf_get_netns_cookie(ctx);
	akey.rev_nat_id = rev_nat_id;
	akey.netns = 1;
	aval = lb_affinity.lookup(&akey);
	if (!aval || now - aval->last_used > svc->affinity_timeout)
		return 0;
	mkey.backend_id = aval->backend_id;
	mkey.rev_nat_id = rev_nat_id;
	mkey.scope = LB_SCOPE_INTERNAL;
	if (!lb_aff_match.lookup(&mkey))
		return 0;
	return aval->backend_id;
}

static __always_inline void lb_affinity_set(struct bpf_sock_addr *ctx, __u16 rev_nat_id,
					    __u32 backend_id, __u64 now)
{
	struct lb_affinity_key akey = {};
	struct lb_affinity_val aval = {};

	akey.client = bpf_get_netns_cookie(ctx);
	akey.rev_nat_id = rev_nat_id;
	akey.netns = 1;
	aval.last_used = now;
	aval.backend_id = backend_id;
	lb_affinity.update(&akey, &aval);
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

static __always_inline void lb4_lc_step(struct lb4_key *key, __u32 i, __u32 start, __u16 count,
					   __u32 *best, __u64 *best_n)
{
	struct lb_service *slot;
	__u64 n;

	if (i >= count)
		return;
	key->backend_slot = (__u16)((start + i) % count) + 1;
	slot = lb4_services.lookup(key);
	if (!slot)
		return;
	n = lb_conns(slot->backend_id);
	if (n < *best_n) {
		*best_n = n;
		*best = slot->backend_id;
	}
}

/* least-conn: the slot whose backend has the fewest live connections,
 * scanning from a random slot so that ties spread. */
static __always_inline __u32 lb4_least_conn(struct lb4_key *key, __u16 count)
{
	struct lb_service *slot;
	__u32 start = bpf_get_prandom_u32(), best = 0;
	__u64 best_n = ~0ULL;

	if (count > LB_LC_SCAN_MAX) {  /* power of two (distinct) choices */
		__u32 first = start % count, other;

		key->backend_slot = (__u16)first + 1;
		slot = lb4_services.lookup(key);
		if (!slot)
			return 0;
		best = slot->backend_id;
		key->backend_slot = (__u16)((first + 1 + bpf_get_prandom_u32() % (count - 1)) % count) + 1;
		slot = lb4_services.lookup(key);
		if (!slot)
			return best;
		other = slot->backend_id;
		return lb_conns(other) < lb_conns(best) ? other : best;
	}
	/* Written out, not a loop: clang leaves such a loop rolled in a shape
	 * whose counter the verifier cannot bound. LB_LC_SCAN_MAX steps. */
	lb4_lc_step(key, 0, start, count, &best, &best_n);
	lb4_lc_step(key, 1, start, count, &best, &best_n);
	lb4_lc_step(key, 2, start, count, &best, &best_n);
	lb4_lc_step(key, 3, start, count, &best, &best_n);
	return best;
}

static __always_inline int lb4_xlate(struct bpf_sock_addr *ctx, __u64 cookie, __u8 proto,
				     __be32 *addr, __be16 *port)
{
	struct lb4_key key = {};
	struct lb4_sock_key skey = {};
	struct lb4_sock_val sval = {};
	struct lb_service *svc, *slot;
	struct lb4_backend *be;
	__u32 backend_id = 0;
	__u16 rev_nat_id, flags;
	__u64 now = 0;
	__u8 alg;

	key.address = *addr;
	key.dport = *port;
	key.proto = proto;
	key.scope = LB_SCOPE_INTERNAL;
	svc = lb4_services.lookup(&key);
	if (!svc)
		return LB_UNTOUCHED;
	if (svc->count == 0)
		return lb_no_backend(svc);
	rev_nat_id = svc->rev_nat_id;
	flags = svc->flags;
	alg = svc->algorithm;

	if (flags & LB_F_AFFINITY) {
		now = bpf_ktime_get_ns() / 1000000000ULL;
		backend_id = lb_affinity_get(ctx, svc, rev_nat_id, now);
	}
	if (!backend_id) {
		if (proto == IPPROTO_TCP && alg == LB_ALG_LEAST_CONN) {
			backend_id = lb4_least_conn(&key, svc->count);
		} else {
			key.backend_slot = lb_pick_slot(cookie, proto, svc, rev_nat_id);
			slot = lb4_services.lookup(&key);
			backend_id = slot ? slot->backend_id : 0;
		}
		if (!backend_id)
			goto inconsistent;
	}
	be = lb4_backends.lookup(&backend_id);
	if (!be)
		goto inconsistent;

	/* Remember the VIP for recvmsg()/getpeername() on this socket. */
	skey.cookie = cookie;
	skey.address = be->address;
	skey.port = be->port;
	sval.address = *addr;
	sval.port = *port;
	sval.rev_nat_id = rev_nat_id;
	lb4_sockrev.update(&skey, &sval);

	*addr = be->address;
	*port = be->port;
	lb_count(rev_nat_id, LB_STAT_SELECTED);
	lb_count_backend(backend_id);
	if (flags & LB_F_AFFINITY)
		lb_affinity_set(ctx, rev_nat_id, backend_id, now);
	if (proto == IPPROTO_TCP && alg == LB_ALG_LEAST_CONN)
		lb_conn_open(ctx, backend_id);
	return LB_TRANSLATED;
inconsistent:
	lb_count(rev_nat_id, LB_STAT_ERROR);
	return -LB_ERR_INCONSISTENT;
}

/* Backend -> VIP for a socket, only while the service still exists with the
 * id recorded at connect time (ids are reused after a service is deleted). */
static __always_inline int lb4_restore(__u64 cookie, __u8 proto, __be32 *addr, __be16 *port)
{
	struct lb4_sock_key skey = {};
	struct lb4_sock_val *sval;
	struct lb4_key key = {};
	struct lb_service *svc;

	skey.cookie = cookie;
	skey.address = *addr;
	skey.port = *port;
	sval = lb4_sockrev.lookup(&skey);
	if (!sval)
		return LB_UNTOUCHED;

	key.address = sval->address;
	key.dport = sval->port;
	key.proto = proto;
	key.scope = LB_SCOPE_INTERNAL;
	svc = lb4_services.lookup(&key);
	if (!svc || svc->rev_nat_id != sval->rev_nat_id) {
		lb4_sockrev.delete(&skey);
		return LB_UNTOUCHED;
	}
	*addr = sval->address;
	*port = sval->port;
	return LB_TRANSLATED;
}

static __always_inline void lb6_lc_step(struct lb6_key *key, __u32 i, __u32 start, __u16 count,
					   __u32 *best, __u64 *best_n)
{
	struct lb_service *slot;
	__u64 n;

	if (i >= count)
		return;
	key->backend_slot = (__u16)((start + i) % count) + 1;
	slot = lb6_services.lookup(key);
	if (!slot)
		return;
	n = lb_conns(slot->backend_id);
	if (n < *best_n) {
		*best_n = n;
		*best = slot->backend_id;
	}
}

/* least-conn: the slot whose backend has the fewest live connections,
 * scanning from a random slot so that ties spread. */
static __always_inline __u32 lb6_least_conn(struct lb6_key *key, __u16 count)
{
	struct lb_service *slot;
	__u32 start = bpf_get_prandom_u32(), best = 0;
	__u64 best_n = ~0ULL;

	if (count > LB_LC_SCAN_MAX) {  /* power of two (distinct) choices */
		__u32 first = start % count, other;

		key->backend_slot = (__u16)first + 1;
		slot = lb6_services.lookup(key);
		if (!slot)
			return 0;
		best = slot->backend_id;
		key->backend_slot = (__u16)((first + 1 + bpf_get_prandom_u32() % (count - 1)) % count) + 1;
		slot = lb6_services.lookup(key);
		if (!slot)
			return best;
		other = slot->backend_id;
		return lb_conns(other) < lb_conns(best) ? other : best;
	}
	/* Written out, not a loop: clang leaves such a loop rolled in a shape
	 * whose counter the verifier cannot bound. LB_LC_SCAN_MAX steps. */
	lb6_lc_step(key, 0, start, count, &best, &best_n);
	lb6_lc_step(key, 1, start, count, &best, &best_n);
	lb6_lc_step(key, 2, start, count, &best, &best_n);
	lb6_lc_step(key, 3, start, count, &best, &best_n);
	return best;
}

static __always_inline int lb6_xlate(struct bpf_sock_addr *ctx, __u64 cookie, __u8 proto,
				     union lb_v6addr *addr, __be16 *port)
{
	struct lb6_key key = {};
	struct lb6_sock_key skey = {};
	struct lb6_sock_val sval = {};
	struct lb_service *svc, *slot;
	struct lb6_backend *be;
	__u32 backend_id = 0;
	__u16 rev_nat_id, flags;
	__u64 now = 0;
	__u8 alg;

	key.address = *addr;
	key.dport = *port;
	key.proto = proto;
	key.scope = LB_SCOPE_INTERNAL;
	svc = lb6_services.lookup(&key);
	if (!svc)
		return LB_UNTOUCHED;
	if (svc->count == 0)
		return lb_no_backend(svc);
	rev_nat_id = svc->rev_nat_id;
	flags = svc->flags;
	alg = svc->algorithm;

	if (flags & LB_F_AFFINITY) {
		now = bpf_ktime_get_ns() / 1000000000ULL;
		backend_id = lb_affinity_get(ctx, svc, rev_nat_id, now);
	}
	if (!backend_id) {
		if (proto == IPPROTO_TCP && alg == LB_ALG_LEAST_CONN) {
			backend_id = lb6_least_conn(&key, svc->count);
		} else {
			key.backend_slot = lb_pick_slot(cookie, proto, svc, rev_nat_id);
			slot = lb6_services.lookup(&key);
			backend_id = slot ? slot->backend_id : 0;
		}
		if (!backend_id)
			goto inconsistent;
	}
	be = lb6_backends.lookup(&backend_id);
	if (!be)
		goto inconsistent;

	skey.cookie = cookie;
	skey.address = be->address;
	skey.port = be->port;
	sval.address = *addr;
	sval.port = *port;
	sval.rev_nat_id = rev_nat_id;
	lb6_sockrev.update(&skey, &sval);

	*addr = be->address;
	*port = be->port;
	lb_count(rev_nat_id, LB_STAT_SELECTED);
	lb_count_backend(backend_id);
	if (flags & LB_F_AFFINITY)
		lb_affinity_set(ctx, rev_nat_id, backend_id, now);
	if (proto == IPPROTO_TCP && alg == LB_ALG_LEAST_CONN)
		lb_conn_open(ctx, backend_id);
	return LB_TRANSLATED;
inconsistent:
	lb_count(rev_nat_id, LB_STAT_ERROR);
	return -LB_ERR_INCONSISTENT;
}

static __always_inline int lb6_restore(__u64 cookie, __u8 proto, union lb_v6addr *addr,
				       __be16 *port)
{
	struct lb6_sock_key skey = {};
	struct lb6_sock_val *sval;
	struct lb6_key key = {};
	struct lb_service *svc;

	skey.cookie = cookie;
	skey.address = *addr;
	skey.port = *port;
	sval = lb6_sockrev.lookup(&skey);
	if (!sval)
		return LB_UNTOUCHED;

	key.address = sval->address;
	key.dport = sval->port;
	key.proto = proto;
	key.scope = LB_SCOPE_INTERNAL;
	svc = lb6_services.lookup(&key);
	if (!svc || svc->rev_nat_id != sval->rev_nat_id) {
		lb6_sockrev.delete(&skey);
		return LB_UNTOUCHED;
	}
	*addr = sval->address;
	*port = sval->port;
	return LB_TRANSLATED;
}

static __always_inline int lb6_is_v4mapped(const union lb_v6addr *a)
{
	return a->p32[0] == 0 && a->p32[1] == 0 && a->p32[2] == LB_V4MAPPED_P32;
}


#define SYS_PROCEED 1
#define SYS_REJECT  0

static __always_inline int sys_result(int ret)
{
	if (ret >= 0)
		return SYS_PROCEED;
	bpf_set_retval(ret);
	return SYS_REJECT;
}

/* IPv4 sockets */

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	int ret;

	ret = lb4_xlate(ctx, lb_socket_cookie(ctx), (__u8)ctx->protocol, &addr, &port);
	if (ret == LB_TRANSLATED) {
		ctx->user_ip4 = addr;
		ctx->user_port = port;
	}
	return sys_result(ret);
}

static __always_inline int sock4_restore(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;

	if (lb4_restore(lb_socket_cookie(ctx), (__u8)ctx->protocol, &addr, &port) ==
	    LB_TRANSLATED) {
		ctx->user_ip4 = addr;
		ctx->user_port = port;
	}
	return SYS_PROCEED;
}

int lb4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

int lb4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

int lb4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_restore(ctx);
}

int lb4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_restore(ctx);
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

static __always_inline int sock6_xlate(struct bpf_sock_addr *ctx)
{
	union lb_v6addr addr;
	__be16 port = (__be16)ctx->user_port;
	__u64 cookie = lb_socket_cookie(ctx);
	__u8 proto = (__u8)ctx->protocol;
	int ret;

	ctx_get_ip6(ctx, &addr);
	if (lb6_is_v4mapped(&addr)) {
		__be32 addr4 = addr.p32[3];

		ret = lb4_xlate(ctx, cookie, proto, &addr4, &port);
		if (ret == LB_TRANSLATED) {
			ctx->user_ip6[3] = addr4;
			ctx->user_port = port;
		}
		return sys_result(ret);
	}
	ret = lb6_xlate(ctx, cookie, proto, &addr, &port);
	if (ret == LB_TRANSLATED) {
		ctx_set_ip6(ctx, &addr);
		ctx->user_port = port;
	}
	return sys_result(ret);
}

static __always_inline int sock6_restore(struct bpf_sock_addr *ctx)
{
	union lb_v6addr addr;
	__be16 port = (__be16)ctx->user_port;
	__u64 cookie = lb_socket_cookie(ctx);
	__u8 proto = (__u8)ctx->protocol;

	ctx_get_ip6(ctx, &addr);
	if (lb6_is_v4mapped(&addr)) {
		__be32 addr4 = addr.p32[3];

		if (lb4_restore(cookie, proto, &addr4, &port) == LB_TRANSLATED) {
			ctx->user_ip6[3] = addr4;
			ctx->user_port = port;
		}
		return SYS_PROCEED;
	}
	if (lb6_restore(cookie, proto, &addr, &port) == LB_TRANSLATED) {
		ctx_set_ip6(ctx, &addr);
		ctx->user_port = port;
	}
	return SYS_PROCEED;
}

int lb6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_xlate(ctx);
}

int lb6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_xlate(ctx);
}

int lb6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6_restore(ctx);
}

int lb6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6_restore(ctx);
}
