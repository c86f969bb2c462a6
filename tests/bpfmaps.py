"""Kernel-state helpers only the tests use (reading counters and Maglev
tables, clearing conntrack and source ranges): the agent never needs them,
so they live beside the tests, not in the package."""

from __future__ import annotations

import ctypes
import ipaddress
from typing import Any

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.layout import Lb4ReverseNat, Lb6ReverseNat, be16, ip4, ip6
from pyagent.dataplanes.ebpf.maglev import _read_inner, _tc_maps, current_table_id
from pyagent.dataplanes.ebpf.tc import TcMaps, set_source_ranges


def clear_source_ranges(maps: TcMaps, rev_nat_id: int) -> None:
    set_source_ranges(maps, rev_nat_id, ())


def tc_stats(maps: TcMaps) -> dict[str, int]:
    """TC verdict counters summed over CPUs, by name."""
    out = {}
    for stat in L.TcStat:
        per_cpu = maps.lb_tc_stats.get(ctypes.c_uint32(stat))
        out[stat.name.lower()] = sum(v.packets for v in per_cpu) if per_cpu else 0
    return out


def flush_conntrack(maps: TcMaps) -> int:
    """Forget every tracked flow (established connections break)."""
    return maps.lb4_ct.clear() + maps.lb6_ct.clear()


def revnat_value(vip: str, port: int) -> Lb4ReverseNat | Lb6ReverseNat:
    if ipaddress.ip_address(vip).version == 4:
        return Lb4ReverseNat(ip4(vip), be16(port))
    return Lb6ReverseNat(ip6(vip), be16(port))


def read_table(maps: Any, rev_nat_id: int) -> list[int] | None:
    """The kernel's table of a service (backend ids by index), or None."""
    tm = _tc_maps(maps)
    map_id = current_table_id(tm, rev_nat_id)
    if map_id is None:
        return None
    data = _read_inner(map_id, tm.lb_maglev_inner.max_entries)
    if data is None:
        return None
    return list((ctypes.c_uint32 * (len(data) // 4)).from_buffer_copy(data))
