/* SPDX-License-Identifier: Apache-2.0
 *
 * Load-balancer maps, pinned under PIN_DIR (a -D string literal naming the
 * bpffs directory). BCC creates a pinned map on first load and reuses it
 * afterwards, so a restarted agent keeps every entry. BCC does not compare
 * the reused map's layout: user space checks key/value sizes before loading.
 *
 * Pin file names carry LB_LAYOUT_VERSION (a layout change never reuses an
 * old map); map names stay within the kernel's 15-char object name limit.
 * pyagent/dataplanes/ebpf/layout.py (MAPS) lists the same names and
 * tests/test_layout.py compares both.
 */
#ifndef PYAGENT_LIB_MAPS_H
#define PYAGENT_LIB_MAPS_H

#include "lb_types.h"

#if !defined(PIN_DIR) && !defined(LB_NO_PIN)
#error "define PIN_DIR as a string literal: the bpffs directory for pinned maps"
#endif

/* Fail early if Python and C disagree on the layout version. */
#if defined(LB_EXPECTED_LAYOUT_VERSION) && LB_EXPECTED_LAYOUT_VERSION != LB_LAYOUT_VERSION
#error "lb_types.h layout version differs from the Python mirror"
#endif

#define LB_STR(x) #x
#define LB_XSTR(x) LB_STR(x)

/* BCC rewrites map calls (m.lookup()) only when the map name is written out,
 * not produced by a macro, so C code uses the plain names and the version
 * goes into the pin file name: PIN_DIR "/lb4_services_v1". */
#define LB_PIN_PATH(name) PIN_DIR "/" #name "_v" LB_XSTR(LB_LAYOUT_VERSION)
#ifdef LB_NO_PIN
/* Private maps that vanish with the loader: `pyagent bpf print`, tests. */
#define LB_MAP(type, key, val, name, max) BPF_TABLE(type, key, val, name, max)
#else
#define LB_MAP(type, key, val, name, max) \
	BPF_TABLE_PINNED(type, key, val, name, max, LB_PIN_PATH(name))
#endif

LB_MAP("hash", struct lb4_key, struct lb_service, lb4_services, LB_SERVICE_MAP_MAX);
LB_MAP("hash", struct lb6_key, struct lb_service, lb6_services, LB_SERVICE_MAP_MAX);
LB_MAP("hash", __u32, struct lb4_backend, lb4_backends, LB_BACKEND_MAP_MAX);
LB_MAP("hash", __u32, struct lb6_backend, lb6_backends, LB_BACKEND_MAP_MAX);
LB_MAP("hash", __u32, struct lb4_reverse_nat, lb4_revnat, LB_REVNAT_MAP_MAX);
LB_MAP("hash", __u32, struct lb6_reverse_nat, lb6_revnat, LB_REVNAT_MAP_MAX);
LB_MAP("lru_hash", struct lb4_sock_key, struct lb4_sock_val, lb4_sockrev,
       LB_SOCK_REVNAT_MAP_MAX);
LB_MAP("lru_hash", struct lb6_sock_key, struct lb6_sock_val, lb6_sockrev,
       LB_SOCK_REVNAT_MAP_MAX);
LB_MAP("lru_hash", struct lb_affinity_key, struct lb_affinity_val, lb_affinity,
       LB_AFFINITY_MAP_MAX);
LB_MAP("percpu_array", __u32, struct lb_svc_stats, lb_svc_stats, LB_STATS_MAP_MAX);
LB_MAP("percpu_array", __u32, __u64, lb_be_stats, LB_BACKEND_STATS_MAX);
LB_MAP("hash", struct lb_affinity_match_key, __u8, lb_aff_match, LB_SERVICE_MAP_MAX);
/* round-robin position per service, per CPU (no atomics needed) */
LB_MAP("percpu_array", __u32, __u32, lb_rr, LB_STATS_MAP_MAX);
/* live connections per backend id, for least-conn */
LB_MAP("hash", __u32, __u64, lb_be_conns, LB_BACKEND_MAP_MAX);

/* the socket LB's scope (lb_types.h) */
LB_MAP("array", __u32, struct lb_sock_config, lb_sock_cfg, 1);
LB_MAP("hash", __u64, __u8, lb_sock_skip, LB_SOCK_SKIP_MAP_MAX);

/* Which backend a least-conn socket counts against, so sock_release can
 * give the connection back. Pinned like the maps: sockets outlive agents. */
#ifdef LB_NO_PIN
BPF_SK_STORAGE(lb_sk_backend, __u32);
#else
struct lb_sk_backend_table_t {
	int key;
	__u32 leaf;
	void *(*sk_storage_get)(void *, void *, int);
	int (*sk_storage_delete)(void *);
	u32 flags;
};
__attribute__((section("maps/sk_storage:" LB_PIN_PATH(lb_sk_backend))))
struct lb_sk_backend_table_t lb_sk_backend = { .flags = BPF_F_NO_PREALLOC };
BPF_ANNOTATE_KV_PAIR(lb_sk_backend, int, __u32);
#endif

/* Decision events (lb_types.h): the listener mask and one ring per monitor
 * slot. lb_mon_ring is the inner-map template (never written); monitors put
 * rings of their own of the same size into lb_mon_rings. */
LB_MAP("array", __u32, struct lb_monitor, lb_monitor, 1);
#ifdef LB_NO_PIN
struct lb_mon_ring_table_t { int key; __u32 leaf; __u32 max_entries; };
__attribute__((section("maps/ringbuf")))
struct lb_mon_ring_table_t lb_mon_ring = { .max_entries = LB_MONITOR_RING_BYTES };
#else
struct lb_mon_ring_table_t { int key; __u32 leaf; __u32 max_entries; };
__attribute__((section("maps/ringbuf:" LB_PIN_PATH(lb_mon_ring))))
struct lb_mon_ring_table_t lb_mon_ring = { .max_entries = LB_MONITOR_RING_BYTES };
#endif
LB_MAP("array_of_maps$lb_mon_ring", __u32, int, lb_mon_rings, LB_MONITOR_SLOTS);

#endif /* PYAGENT_LIB_MAPS_H */
