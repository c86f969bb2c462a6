"""Per-backend connection counts as the kernel keeps them, for `pyagent
services list`: new connections per backend id from lb_be_stats (the socket
hooks count a connect or a UDP socket's first pick, the TC program a new
conntrack flow), live connections from lb_be_conns (least-conn sockets)
plus the TC path's live conntrack service entries. Both are kept per
backend id, so frontends sharing a backend show the same counts for it."""

from __future__ import annotations

import time
from collections import Counter

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import socket_lb


def backend_counters(bpffs: str) -> tuple[dict[int, int], dict[int, int]]:
    """({backend id: new connections}, {backend id: live connections})."""
    new: dict[int, int] = {}
    active: Counter[int] = Counter()
    maps = socket_lb.open_pinned(bpffs, {n: L.MAPS[n] for n in ("lb_be_stats", "lb_be_conns")},
                                "LB")
    try:
        for k, per_cpu in maps["lb_be_stats"].items():
            n = sum(v.value for v in per_cpu)
            if n:
                new[k.value] = n
        for k, v in maps["lb_be_conns"].items():
            active[k.value] += v.value
    finally:
        for m in maps.values():
            m.close()
    now = time.monotonic()
    for name in ("lb4_ct", "lb6_ct"):
        try:
            ct = socket_lb.open_pinned(bpffs, {name: L.TC_MAPS[name]}, "TC")[name]
        except FileNotFoundError:
            continue
        try:
            for _k, v in ct.items():
                if v.flags & L.CtFlag.SERVICE and not v.flags & L.CtFlag.CLOSING \
                        and v.expires >= now:
                    active[v.backend_id] += 1
        finally:
            ct.close()
    return new, dict(active)
