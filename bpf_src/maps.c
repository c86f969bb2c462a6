// SPDX-License-Identifier: Apache-2.0
/*
 * Every pinned map of the socket LB and the TC programs (with LB_NO_TC_MAPS
 * the socket LB's only, for a node without TC interfaces), and no real
 * program: a load of this file (about 0.2 s) creates the pins, after which
 * sock_lb.c and tc_nat.c compile side by side and only reuse them (two
 * loads creating the same pin at once would race), and the agent fills
 * them while they compile. One stub function makes BCC emit the BTF that
 * lb_sk_backend (sk_storage) needs.
 */
#include <uapi/linux/bpf.h>

#ifdef LB_NO_TC_MAPS
#include "lib/maps.h"
#else
#include "lib/tc_maps.h"
#endif

int lb_maps_only(struct __sk_buff *skb)
{
	return 0;
}
