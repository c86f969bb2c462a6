"""Scrape-time readings of the eBPF dataplane for /metrics."""

from __future__ import annotations

import ctypes
from typing import Any

from pyagent.dataplanes.ebpf.programs import LBMaps
from pyagent.model import join_host_port


class Stats:
    def __init__(self, maps: LBMaps, dataplane: Any) -> None:
        self.maps = maps
        self.dataplane = dataplane

    def map_pressure(self) -> dict[str, float]:
        """Fill of the maps the agent writes, from its own bookkeeping (no
        walk): exactly 1.0 once a map (or the id space it draws from) is full."""
        r = self.dataplane.reconciler
        return r.pressure() if r is not None else {}

    def service_connections(self) -> dict[str, float]:
        """Backend selections per service, summed over CPUs (per-CPU array by rev id)."""
        r = self.dataplane.reconciler
        if r is None:
            return {}
        out: dict[str, float] = {}
        for fe in list(r.kernel.values()):
            rev_id = r.rev_ids.get(fe.addr)
            if rev_id is None or not fe.service:
                continue
            per_cpu = self.maps.lb_svc_stats.get(ctypes.c_uint32(rev_id)) or []
            total = sum(v.selected for v in per_cpu)
            out[fe.service] = out.get(fe.service, 0) + total
        return out

    def backend_connections(self) -> dict[str, float]:
        """Connections sent to each backend ("ip:port"), summed over CPUs."""
        r = self.dataplane.reconciler
        if r is None:
            return {}
        stats = self.maps.lb_be_stats
        out: dict[str, float] = {}
        for bid, b in list(r.backends.items()):
            if bid < stats.max_entries:
                per_cpu = stats.get(ctypes.c_uint32(bid)) or []
                addr = join_host_port(b.ip, b.port)
                out[addr] = out.get(addr, 0) + sum(v.value for v in per_cpu)
        return out
