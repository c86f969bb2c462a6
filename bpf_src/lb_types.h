/* SPDX-License-Identifier: Apache-2.0
 *
 * The single source of truth for every struct and constant shared between
 * the BPF programs and user space. Python mirrors these in
 * pyagent/dataplanes/ebpf/layout.py and tests/test_layout.py checks the
 * mirrors against what BCC compiled.
 *
 * Every struct spells out its padding: the verifier rejects map updates from
 * stack buffers with uninitialised holes, and explicit pads keep the Python
 * mirrors honest.
 *
 * Bump LB_LAYOUT_VERSION on any change to a struct below: pinned map names
 * carry it, so a new layout never silently reuses an old pinned map.
 */
#ifndef PYAGENT_LB_TYPES_H
#define PYAGENT_LB_TYPES_H

#define LB_LAYOUT_VERSION 2

/* Map capacities; user space reads them back from the maps themselves. */
#ifndef LB_SERVICE_MAP_MAX
#define LB_SERVICE_MAP_MAX 262144
#endif
#ifndef LB_BACKEND_MAP_MAX
#define LB_BACKEND_MAP_MAX 262144
#endif
#ifndef LB_REVNAT_MAP_MAX
#define LB_REVNAT_MAP_MAX 65536
#endif
#ifndef LB_SOCK_REVNAT_MAP_MAX
#define LB_SOCK_REVNAT_MAP_MAX 262144
#endif
#ifndef LB_AFFINITY_MAP_MAX
#define LB_AFFINITY_MAP_MAX 65536
#endif
/* Per-CPU counters are indexed by rev_nat_id: ids are 1..max_entries-1. */
#ifndef LB_STATS_MAP_MAX
#define LB_STATS_MAP_MAX 65536
#endif
/* Per-CPU new-connection counters by backend id; ids beyond it are not
 * counted (an array, so its per-CPU memory is fixed: 8 bytes x CPUs each). */
#ifndef LB_BACKEND_STATS_MAX
#define LB_BACKEND_STATS_MAX 65536
#endif

/* least-conn scans every slot of services this small; larger ones take the
 * less loaded of two distinct random slots (power of two choices, as Envoy's
 * least_request does): a scan of every slot would not pass the verifier. */
#define LB_LC_SCAN_MAX 4

/* Slot 0 of a frontend is its master entry; slots 1..count+qcount hold backend ids. */
#define LB_MASTER_SLOT 0
#define LB_MAX_SLOTS 65535

/* lb_key.scope: which view of the service this frontend entry is.
 * EXTERNAL is what traffic from outside the cluster gets (eTP decides),
 * INTERNAL is what pods and the node itself get (iTP for ClusterIP, and the
 * eTP=Local short-circuit to all endpoints for external frontends). */
#define LB_SCOPE_EXTERNAL 0
#define LB_SCOPE_INTERNAL 1

/* lb_service.flags (master entry) */
#define LB_F_CLUSTER_IP     (1 << 0)
#define LB_F_NODE_PORT      (1 << 1)
#define LB_F_EXTERNAL_IP    (1 << 2)
#define LB_F_LOADBALANCER   (1 << 3)
#define LB_F_LOCAL_ETP      (1 << 4)
#define LB_F_LOCAL_ITP      (1 << 5)
#define LB_F_AFFINITY       (1 << 6)
#define LB_F_SOURCE_RANGE   (1 << 7)
#define LB_F_MASQUERADE     (1 << 8)
/* count == 0: with this flag endpoints exist elsewhere but none fit the
 * traffic policy, so drop; without it there are none at all, so reject. */
#define LB_F_DROP_NO_BACKEND (1 << 9)

/* lb_service.algorithm */
#define LB_ALG_RANDOM      0
#define LB_ALG_ROUND_ROBIN 1
#define LB_ALG_LEAST_CONN  2
#define LB_ALG_MAGLEV      3

/* lb*_backend.state */
#define LB_BACKEND_ACTIVE      0
#define LB_BACKEND_TERMINATING 1
#define LB_BACKEND_MAINTENANCE 2

/* lb*_backend.flags */
#define LB_BACKEND_F_LOCAL (1 << 0)

/* Address families of the BPF code that serves both (lib/lb.h). */
#define LB_V4 4
#define LB_V6 6

union lb_v6addr {
	__u8  addr[16];
	__u32 p32[4];
	__u64 p64[2];
};

/* services maps: frontend (+slot) -> master entry or backend id */
struct lb4_key {
	__be32 address;   /* VIP, network order */
	__be16 dport;     /* network order */
	__u16 backend_slot;
	__u8  proto;      /* IPPROTO_* */
	__u8  scope;      /* LB_SCOPE_* */
	__u8  pad[2];
};

struct lb6_key {
	union lb_v6addr address;
	__be16 dport;
	__u16 backend_slot;
	__u8  proto;
	__u8  scope;
	__u8  pad[2];
};

struct lb_service {
	__u32 backend_id;        /* slot > 0: backend id; master: 0 */
	__u32 affinity_timeout;  /* master: seconds, with LB_F_AFFINITY */
	__u16 count;             /* master: active backends in slots 1..count */
	__u16 qcount;            /* master: terminating backends after them */
	__u32 rev_nat_id;        /* master: service id (also rev-NAT key) */
	__u16 flags;             /* master: LB_F_* */
	__u8  algorithm;         /* master: LB_ALG_* */
	__u8  pad;
};

/* backends maps: backend id -> address */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8  proto;
	__u8  state;             /* LB_BACKEND_* */
	__u8  flags;             /* LB_BACKEND_F_* */
	__u8  zone;
	__u8  pad[2];
};

struct lb6_backend {
	union lb_v6addr address;
	__be16 port;
	__u8  proto;
	__u8  state;
	__u8  flags;
	__u8  zone;
	__u8  pad[2];
};

/* rev-NAT maps: service id -> frontend, for replies and getpeername */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb6_reverse_nat {
	union lb_v6addr address;
	__be16 port;
	__u16 pad;
	__u32 pad2;              /* the union is 8-aligned: no hidden tail */
};

/* socket rev-NAT (LRU): which VIP a connected/sending socket really meant */
struct lb4_sock_key {
	__u64 cookie;
	__be32 address;          /* backend */
	__be16 port;
	__u16 pad;
};

struct lb6_sock_key {
	__u64 cookie;
	union lb_v6addr address;
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct lb4_sock_val {
	__be32 address;          /* VIP */
	__be16 port;
	__u16 pad;
	__u32 rev_nat_id;
};

struct lb6_sock_val {
	union lb_v6addr address;
	__be16 port;
	__u16 pad;
	__u32 rev_nat_id;        /* with it the 8-aligned union leaves no hidden tail */
};

/* affinity (LRU): client + service -> backend */
struct lb_affinity_key {
	__u64 client;            /* netns cookie (socket path) or client IPv4 (TC) */
	__u32 rev_nat_id;
	__u8  netns;             /* 1: client is a netns cookie */
	__u8  pad[3];
};

struct lb_affinity_val {
	__u64 last_used;         /* bpf_ktime_get_ns() / 1e9 */
	__u32 backend_id;
	__u32 pad;
};

/* affinity membership (hash): is this backend still in this service? An
 * affinity entry naming a backend that left the service is ignored. */
struct lb_affinity_match_key {
	__u32 backend_id;
	__u32 rev_nat_id;
	__u8  scope;             /* LB_SCOPE_*: the two scopes may differ in backends */
	__u8  pad[3];
};

/* per-CPU service counters (array indexed by rev_nat_id) */
struct lb_svc_stats {
	__u64 selected;          /* connect()/sendmsg() sent to a backend */
	__u64 no_backend;        /* failed: count == 0 (reject or drop) */
	__u64 errors;            /* failed: slot or backend missing (maps mid-update) */
};

/* ---- TC (north-south) path: conntrack, source ranges, node config ---- */

#ifndef LB_CT_MAP_MAX
#define LB_CT_MAP_MAX 262144
#endif
#ifndef LB_SRC_RANGE_MAP_MAX
#define LB_SRC_RANGE_MAP_MAX 16384
#endif

/* lb*_ct_key.stage: the hook class an entry applies at. A flow's packets
 * are rewritten in two halves with the kernel's routing in between, so the
 * same 5-tuple can need one rewrite on ingress and another (or none) on
 * egress. */
#define LB_CT_INGRESS 0
#define LB_CT_EGRESS  1

/* lb*_ct_val.flags */
#define LB_CT_F_SNAT     (1 << 0)  /* rewrite the source to (saddr, sport) */
#define LB_CT_F_DNAT     (1 << 1)  /* rewrite the destination to (daddr, dport) */
#define LB_CT_F_SERVICE  (1 << 2)  /* the service entry of a flow (revalidated) */
#define LB_CT_F_CLOSING  (1 << 3)  /* TCP FIN or RST seen: short timeout */
#define LB_CT_F_DSR      (1 << 4)  /* service entry: the backend answers the client
				    * itself; packets carry the DSR option */

/* Conntrack (LRU), one entry per (packet tuple, stage). A flow from client
 * C:c to frontend V:v served by backend B:b, masqueraded as N:n, has:
 *   ingress (C,c -> V,v)  DNAT to B:b        (the service entry)
 *   egress  (C,c -> B,b)  SNAT to N:n        (masquerade only)
 *   ingress (B,b -> N,n)  DNAT to C:c        (masquerade only)
 *   egress  (B,b -> C,c)  SNAT to V:v        (reply leaves with the VIP) */
struct lb4_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8  proto;
	__u8  stage;             /* LB_CT_INGRESS | LB_CT_EGRESS */
	__u8  pad[2];
};

struct lb6_ct_key {
	union lb_v6addr saddr;
	union lb_v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u8  proto;
	__u8  stage;
	__u8  pad[2];
};

struct lb4_ct_val {
	__be32 saddr;            /* with LB_CT_F_SNAT */
	__be32 daddr;            /* with LB_CT_F_DNAT */
	__be16 sport;
	__be16 dport;
	__u32 backend_id;        /* service entry: the backend it chose */
	__u64 expires;           /* CLOCK_MONOTONIC seconds */
	__u32 rev_nat_id;
	__u8  flags;             /* LB_CT_F_* */
	__u8  pad[3];
};

struct lb6_ct_val {
	union lb_v6addr saddr;
	union lb_v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 backend_id;
	__u64 expires;
	__u32 rev_nat_id;
	__u8  flags;
	__u8  pad[3];
};

/* loadBalancerSourceRanges (LPM trie): a frontend with LB_F_SOURCE_RANGE
 * accepts a client only if (its rev_nat_id, client address) matches.
 * prefixlen counts the 32 bits of rev_nat_id plus the CIDR length. */
#define LB_SRC_RANGE_PREFIX_BITS 32

struct lb4_src_range_key {
	__u32 prefixlen;
	__u32 rev_nat_id;        /* matched exactly: any byte order works */
	__be32 address;
};

struct lb6_src_range_key {
	__u32 prefixlen;
	__u32 rev_nat_id;
	union lb_v6addr address;
};

/* Maglev consistent hashing (LB_ALG_MAGLEV frontends on the TC path): per
 * service id a lookup table of LB_MAGLEV_M backend ids, an inner array map
 * held by the hash-of-maps lb_maglev (key: rev_nat_id as __u32). A new
 * flow takes table[flow hash % LB_MAGLEV_M]. M is prime (the permutation
 * needs it) and much larger than any service's backend count, so shares
 * stay within ~1% for up to ~100 backends: 16381 entries = 64 KiB per
 * Maglev service. User space builds a new table in a fresh inner map and
 * swaps it in with one update of lb_maglev (atomic for readers). */
#ifndef LB_MAGLEV_MAP_MAX
#define LB_MAGLEV_MAP_MAX 65536
#endif
#define LB_MAGLEV_M 16381

/* Per-node settings of the TC programs (array, one entry at index 0),
 * written by user space so a node IP change needs no recompile. */
#define LB_CONFIG_KEY 0

/* lb_node_config.flags */
#define LB_CFG_F_SNAT4 (1 << 0)  /* snat_ip4 is set */
#define LB_CFG_F_SNAT6 (1 << 1)  /* snat_ip6 is set */
/* External traffic to a ClusterIP (an INTERNAL-scope frontend with
 * LB_F_CLUSTER_IP, served at lb_netdev_ingress) is masqueraded in this
 * family: kube-proxy's masqueradeAll, or a local-traffic detector, which
 * counts traffic entering on a node interface as not from a pod. */
#define LB_CFG_F_MASQ_CLUSTER_IP4 (1 << 2)
#define LB_CFG_F_MASQ_CLUSTER_IP6 (1 << 3)

/* lb_pod_ingress translates new flows to any frontend (INTERNAL scope, the
 * socket LB's view) rather than only tracking them: set while the socket
 * LB leaves some pods' sockets alone (lb_sock_config), whose connections
 * then reach the pod interfaces as packets to the VIP. */
#define LB_CFG_F_POD_LB (1 << 4)

/* Direct Server Return for new flows from outside to an EXTERNAL frontend
 * served by another node's backend (Cilium's bpf-lb-mode dsr / hybrid):
 * no masquerade; the packet, DNATed to the backend, carries the frontend in
 * an IPv4 option / IPv6 destination option (struct lb_dsr*), and the
 * backend's node, seeing it, sends the reply straight to the client with
 * the frontend as source. TCP: on the SYN (the backend node's conntrack
 * keeps it); UDP: on every datagram. Every node accepts the option for its
 * own frontends, whatever its mode. */
#define LB_CFG_F_DSR_TCP (1 << 5)
#define LB_CFG_F_DSR_UDP (1 << 6)

/* RFC 4727 experimental values: the IPv4 option with the copied bit set
 * (kept in fragments), the IPv6 option with the "skip if unknown" action,
 * so a backend that does not know it still takes the packet. */
#define LB_DSR_OPT4 0x9e
#define LB_DSR_OPT6 0x1e

struct lb_dsr4_opt {             /* 8 bytes after the IPv4 header (ihl 7) */
	__u8  type;              /* LB_DSR_OPT4 */
	__u8  len;               /* 8 */
	__be16 port;             /* the frontend */
	__be32 addr;
};

struct lb_dsr6_hdr {             /* a destination options header, 24 bytes */
	__u8  nexthdr;
	__u8  hdrlen;            /* 2: (2 + 1) * 8 bytes */
	__u8  type;              /* LB_DSR_OPT6 */
	__u8  len;               /* 18 */
	__be16 port;
	__u8  addr[16];
	__u8  pad_type;          /* PadN (1), len 0: the header ends 8-aligned */
	__u8  pad_len;
};

/* Defaults for zero fields of lb_node_config. The SNAT port range sits above
 * Linux's default ip_local_port_range (32768-60999), so masqueraded flows do
 * not collide with the node's own connections. */
#define LB_SNAT_PORT_MIN_DEFAULT 61000
#define LB_SNAT_PORT_MAX_DEFAULT 65535
#define LB_CT_TIMEOUT_TCP_DEFAULT     21600
#define LB_CT_TIMEOUT_OTHER_DEFAULT   60
#define LB_CT_TIMEOUT_CLOSING_DEFAULT 10

struct lb_node_config {
	__be32 snat_ip4;         /* masquerade source (a node IPv4) */
	__u16 snat_port_min;     /* host order; 0: default */
	__u16 snat_port_max;
	union lb_v6addr snat_ip6;
	__u32 ct_timeout_tcp;    /* seconds; 0: default */
	__u32 ct_timeout_other;
	__u32 ct_timeout_closing;
	__u32 flags;             /* LB_CFG_F_* */
};

/* Which sockets the socket LB translates (lb_sock_cfg, an array of one at
 * LB_SOCK_CFG_KEY; all zero: every socket). Sockets it skips connect to
 * the VIP itself, so a service-mesh sidecar in their pod sees the VIP, and
 * the TC programs on the pod interfaces balance their packets instead. */
#define LB_SOCK_CFG_KEY 0
#define LB_SOCK_F_HOST_NS_ONLY (1 << 0)  /* only sockets of host_netns_cookie */
#define LB_SOCK_F_SKIP_LIST    (1 << 1)  /* lb_sock_skip may hold entries */

struct lb_sock_config {
	__u64 host_netns_cookie;  /* the host network namespace; 0: init_net */
	__u32 flags;              /* LB_SOCK_F_* */
	__u32 pad;
};

/* lb_sock_skip: netns cookie -> 1, the pods that opted out of the socket
 * LB. Cookies are never reused, so an entry of a deleted pod only waits
 * for its removal. */
#ifndef LB_SOCK_SKIP_MAP_MAX
#define LB_SOCK_SKIP_MAP_MAX 4096
#endif

/* Per-CPU TC verdict counters (array indexed by LB_TC_STAT_*). */
#define LB_TC_STAT_PASS        0  /* not service traffic, untouched */
#define LB_TC_STAT_NEW         1  /* new flow to a backend */
#define LB_TC_STAT_CT_HIT      2  /* rewritten by an existing entry */
#define LB_TC_STAT_DROP        3  /* policy: no local backend, eTP=Local */
#define LB_TC_STAT_DROP_RANGE  4  /* loadBalancerSourceRanges */
#define LB_TC_STAT_REJECT      5  /* no endpoints: RST / ICMP unreachable sent */
#define LB_TC_STAT_ERROR       6  /* maps mid-update, no SNAT address or port */
#define LB_TC_STAT_FRAGMENT    7  /* fragments: passed untouched */
#define LB_TC_STAT_ICMP_ERROR  8  /* ICMP error about a tracked flow, translated */
#define LB_TC_STAT_DSR_BACKEND 9  /* a DSR packet for a backend here: reply entry written */
#define LB_TC_STAT_XDP_DONE    10 /* XDP finished the packet (TC skips it) */
#define LB_TC_STAT_XDP_TO_TC   11 /* XDP left the packet to TC untouched */
#define LB_TC_STAT_MAX         16

struct lb_tc_stat {
	__u64 packets;
};

/* ---- decision events (`pyagent monitor`) ----
 *
 * Each listening monitor owns one slot of lb_mon_rings (an array of ring
 * buffers it creates itself, so two monitors never consume each other's
 * records) and sets its bit in lb_monitor.mask. Every LB decision looks
 * at the mask first: with no listener that one array lookup is all an
 * event costs. The owner fields are user space's (pid + start time, so a
 * monitor killed without cleaning up is recognised and its slot reclaimed);
 * the programs read only mask and add to lost. */
#define LB_MONITOR_SLOTS 4
#define LB_MONITOR_KEY 0
/* bytes per ring (a power of two pages; the inner-map template and every
 * monitor's ring must have the same size) */
#define LB_MONITOR_RING_BYTES 131072

/* lb_event.verdict */
#define LB_EV_TRANSLATED   1  /* sent to a backend */
#define LB_EV_AFFINITY     2  /* sent to the backend of a live affinity entry */
#define LB_EV_REJECT       3  /* no endpoints: ECONNREFUSED / RST / ICMP */
#define LB_EV_DROP         4  /* endpoints exist, none fit the policy (or source range) */
#define LB_EV_NO_BACKEND   5  /* slot or backend missing: maps mid-update */

/* lb_event.origin */
#define LB_EV_FROM_SOCK 1  /* connect() / sendmsg() at the cgroup hooks */
#define LB_EV_FROM_TC   2  /* a new flow at a node interface (TC ingress) */
#define LB_EV_FROM_XDP  3  /* the same, decided at XDP */

struct lb_monitor {
	__u32 mask;              /* bit i: slot i of lb_mon_rings has a listener */
	__u32 pad;
	__u64 lost;              /* events not written: a listener's ring was full */
	__u32 owner_pid[LB_MONITOR_SLOTS];
	__u64 owner_start[LB_MONITOR_SLOTS];  /* /proc/<pid>/stat start time */
};

/* One ring buffer record per decision. */
struct lb_event {
	__u64 time_ns;           /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 netns_cookie;      /* socket path: the client's netns; TC: 0 */
	union lb_v6addr client;  /* TC: the client's address; socket path: zero */
	union lb_v6addr frontend;
	union lb_v6addr backend; /* zero without a backend */
	__be16 client_port;      /* TC only */
	__be16 frontend_port;
	__be16 backend_port;
	__u16 pad;
	__u32 rev_nat_id;
	__u32 backend_id;
	__u8  family;            /* LB_V4 | LB_V6 */
	__u8  proto;
	__u8  verdict;           /* LB_EV_* */
	__u8  origin;            /* LB_EV_FROM_* */
	__u8  pad2[4];           /* the 8-aligned fields leave no hidden tail */
};

#endif /* PYAGENT_LB_TYPES_H */
