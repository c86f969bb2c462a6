/* SPDX-License-Identifier: Apache-2.0
 *
 * Maps only the TC (north-south) programs use, pinned next to the LB maps
 * of lib/maps.h under PIN_DIR with the same versioned names. The socket LB
 * does not include this file, so it never creates them.
 * pyagent/dataplanes/ebpf/layout.py (TC_MAPS) lists the same names.
 */
#ifndef PYAGENT_LIB_TC_MAPS_H
#define PYAGENT_LIB_TC_MAPS_H

#include "lib/maps.h"

/* LB_MAP with map flags (LPM tries must not be preallocated). */
#ifdef LB_NO_PIN
#define LB_MAP_F(type, key, val, name, max, flags) \
	BPF_F_TABLE(type, key, val, name, max, flags)
#else
#define LB_MAP_F(type, key, val, name, max, flags) \
	BPF_TABLE_PINNED(type, key, val, name, max, LB_PIN_PATH(name), flags)
#endif

LB_MAP("lru_hash", struct lb4_ct_key, struct lb4_ct_val, lb4_ct, LB_CT_MAP_MAX);
LB_MAP("lru_hash", struct lb6_ct_key, struct lb6_ct_val, lb6_ct, LB_CT_MAP_MAX);
LB_MAP_F("lpm_trie", struct lb4_src_range_key, __u8, lb4_srcrange, LB_SRC_RANGE_MAP_MAX,
	 BPF_F_NO_PREALLOC);
LB_MAP_F("lpm_trie", struct lb6_src_range_key, __u8, lb6_srcrange, LB_SRC_RANGE_MAP_MAX,
	 BPF_F_NO_PREALLOC);
LB_MAP("array", __u32, struct lb_node_config, lb_node_config, 1);
LB_MAP("percpu_array", __u32, struct lb_tc_stat, lb_tc_stats, LB_TC_STAT_MAX);

/* Maglev tables: lb_maglev_inner is the inner-map template (BCC wants a
 * declared map; pinned like the others so open_pinned_tc_maps finds every
 * TC map, never filled); lb_maglev maps rev_nat_id -> a fresh array of the
 * same shape per Maglev service (see lb_types.h). BCC writes the section
 * "hash_of_maps$lb_maglev_inner" into the pinned table type. */
LB_MAP("array", __u32, __u32, lb_maglev_inner, LB_MAGLEV_M);
LB_MAP("hash_of_maps$lb_maglev_inner", __u32, int, lb_maglev, LB_MAGLEV_MAP_MAX);

#endif /* PYAGENT_LIB_TC_MAPS_H */
