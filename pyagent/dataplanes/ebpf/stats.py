"""Scrape-time readings of the eBPF dataplane for /metrics."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from ebpf import libbpf
from ebpf.maps import Map
from pyagent.dataplanes.ebpf.reconciler import Reconciler
from pyagent.dataplanes.ebpf.socket_lb import LBMaps


class Stats:
    """`reconciler` returns the dataplane's current one (it is rebuilt after
    a failed sync), read through its typed API only."""

    def __init__(self, maps: LBMaps, reconciler: Callable[[], Reconciler | None],
                 tc_stats: Map | None = None) -> None:
        self.maps = maps
        self.reconciler = reconciler
        self.tc_stats = tc_stats  # lb_tc_stats when the TC programs run

    def north_south_packets(self) -> dict[str, float]:
        """lb_tc_stats by verdict name, summed over CPUs ({} without TC)."""
        if self.tc_stats is None:
            return {}
        from pyagent.dataplanes.ebpf.layout import TcStat

        counts = _column(self.tc_stats, 0)
        return {s.name.lower(): counts[s] for s in TcStat if s < len(counts)}

    def map_pressure(self) -> dict[str, float]:
        """Fill of the maps the agent writes, from its own bookkeeping (no
        walk): exactly 1.0 once a map (or the id space it draws from) is full."""
        r = self.reconciler()
        return r.pressure() if r is not None else {}

    def service_connections(self) -> dict[str, float]:
        """Backend selections per service port, summed over CPUs (per-CPU
        array by rev id, read in one batch, not one syscall per frontend).
        Each rev id counts once (both scopes of an address share it)."""
        r = self.reconciler()
        if r is None:
            return {}
        selected = _column(self.maps.lb_svc_stats, 0)
        n = len(selected)
        seen: set[int] = set()
        out: dict[str, float] = {}
        for fe in r.frontends():
            rev_id = r.rev_id(fe)
            if rev_id is None or rev_id >= n or rev_id in seen or not fe.service:
                continue
            seen.add(rev_id)
            out[fe.service] = out.get(fe.service, 0) + selected[rev_id]
        return out

    def backend_connections(self) -> dict[str, float]:
        """Connections sent to each backend ("ip:port"), summed over CPUs."""
        r = self.reconciler()
        if r is None:
            return {}
        counts = _column(self.maps.lb_be_stats, 0)
        n = len(counts)
        out: dict[str, float] = {}
        for bid, (ip, port, _proto, _local) in r.backend_ids_in_use():
            if bid < n:
                addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"  # join_host_port
                out[addr] = out.get(addr, 0) + counts[bid]
        return out


def _array_values(m: Map) -> bytes:
    """Every value of a (per-CPU) array map, in index order: one batched
    lookup (per-CPU values are the kernel's 8-aligned slots per CPU)."""
    n = m.max_entries
    vsize = ((ctypes.sizeof(m.value_type) + 7) & ~7) * m.ncpus if m.percpu else \
        ctypes.sizeof(m.value_type)
    keys = (ctypes.c_uint32 * n)()
    values = (ctypes.c_uint8 * (vsize * n))()
    try:
        got, _ = libbpf.map_lookup_batch(m.fd, None, (ctypes.c_uint8 * 8)(), keys, values, n)
    except OSError:  # no batch ops on this kernel
        return b"".join(v for _, v in m.items_raw())
    return bytes(memoryview(values)[:got * vsize])


def _column(m: Map, field: int) -> list[int]:
    """Per index of a per-CPU array of u64 fields: field `field` summed over CPUs."""
    raw = _array_values(m)
    if not raw:
        return []
    stride = (ctypes.sizeof(m.value_type) + 7) // 8  # u64 per CPU value (8-aligned)
    per_key = stride * m.ncpus
    vals = memoryview(raw).cast("Q")
    cols = [vals[cpu * stride + field::per_key] for cpu in range(m.ncpus)]
    return list(cols[0]) if len(cols) == 1 else [sum(t) for t in zip(*cols, strict=True)]
