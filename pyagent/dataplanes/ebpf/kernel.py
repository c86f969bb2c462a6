"""The reconciler's MapWriter over the real pinned maps, and the reverse:
decoding the maps into frontends (for adoption on restart and `maps dump`)."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from pyagent.dataplanes.ebpf import codec
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.capacity import MAGLEV, MAX_REV_ID, REV_IDS, SRCRANGE
from pyagent.dataplanes.ebpf.frontends import Backend, Frontend
from pyagent.dataplanes.ebpf.reconciler import (
    AFFMATCH,
    BACKENDS,
    REVNAT,
    SERVICES,
    KernelState,
    Op,
    Phase,
)
from pyagent.dataplanes.ebpf.socket_lb import LBMaps

log = logging.getLogger(__name__)


def _map(maps: LBMaps, m: str, family: int):
    return getattr(maps, {SERVICES: f"lb{family}_services", BACKENDS: f"lb{family}_backends",
                          REVNAT: f"lb{family}_revnat", AFFMATCH: "lb_aff_match"}[m])


LOGICAL = [(m, f) for m in (SERVICES, BACKENDS, REVNAT) for f in (4, 6)] + [(AFFMATCH, 0)]


class KernelWriter:
    """Runs each phase as one batched update and one batched delete per map.
    Within a phase, deletes go after updates (phases never need both for one key)."""

    def __init__(self, maps: LBMaps, tc_maps: Any = None) -> None:
        self.maps = maps
        self.tc_maps = tc_maps
        self._capacity = {(m, f): _map(maps, m, f).max_entries for m, f in LOGICAL}
        # rev-NAT ids index the per-service counter and round-robin arrays
        self._capacity[(REV_IDS, 0)] = min(MAX_REV_ID, maps.lb_svc_stats.max_entries - 1,
                                           maps.lb_rr.max_entries - 1)
        if tc_maps is not None:  # the TC path's maps (write_tc)
            self._capacity[(MAGLEV, 0)] = tc_maps.lb_maglev.max_entries
            self._capacity[(SRCRANGE, 4)] = tc_maps.lb4_srcrange.max_entries
            self._capacity[(SRCRANGE, 6)] = tc_maps.lb6_srcrange.max_entries

    def capacity(self) -> Mapping[tuple[str, int], int]:
        return self._capacity

    @property
    def has_tc(self) -> bool:
        return self.tc_maps is not None

    def write_tc(self, ranges: Mapping[int, tuple[str, ...]],
                 tables: Mapping[int, list[tuple[int, str]]], prune: bool) -> None:
        """Source ranges and Maglev tables by service id (after the LB phases:
        a frontend's master entry exists before its ranges or table)."""
        from pyagent.dataplanes.ebpf import maglev, tc

        tc.sync_source_ranges(self.tc_maps, ranges, prune=prune)
        if tables or prune:
            maglev.sync_tables(self.tc_maps, tables, prune=prune)

    def run(self, phases: list[Phase]) -> None:
        for phase in phases:
            for (m, f), (ks, vs) in phase.puts.items():
                if not ks:
                    continue
                _map(self.maps, m, f).update_many_raw(codec.pack_keys(m, f, ks),
                                                      codec.pack_values(m, f, vs))
                if m == BACKENDS:
                    self._reset_counters(self.maps.lb_be_stats, [k[0] for k in ks])
                elif m == REVNAT:  # a reused service id starts from zero too
                    self._reset_counters(self.maps.lb_svc_stats, [k[0] for k in ks])
            for (m, f), ks in phase.dels.items():
                if ks:
                    _map(self.maps, m, f).delete_many_raw(codec.pack_keys(m, f, ks))

    @staticmethod
    def _reset_counters(stats: Any, ids: Iterable[int]) -> None:
        """An id may be reused: its per-CPU counters start again from zero."""
        keys = [i for i in ids if i < stats.max_entries]
        if keys:
            stride = (ctypes.sizeof(stats.value_type) + 7) & ~7  # per-CPU values: 8-aligned
            zero = bytes(stride * stats.ncpus)
            stats.update_many_raw(struct.pack(f"<{len(keys)}I", *keys), zero * len(keys))


def read_entries(maps: LBMaps) -> dict[tuple[str, int], dict[tuple, tuple]]:
    """Every services/backends/revnat entry, decoded to logical tuples."""
    return {(m, f): {codec.unpack_key(m, f, k): codec.unpack_value(m, f, v)
                     for k, v in _map(maps, m, f).items_raw()} for m, f in LOGICAL}


def decode(entries: dict[tuple[str, int], dict[tuple, tuple]]) -> KernelState:
    """Rebuild frontends and ids from map entries; what is inconsistent (a
    slot past the count, a backend nobody references, a rev-NAT entry of no
    frontend, a master whose slot, backend or rev-NAT entry is missing or
    disagrees with another frontend's) becomes a delete in `stray`: such a
    frontend is not adopted, the desired state writes it anew."""
    st = KernelState()
    rev_addr: dict[int, tuple] = {}  # rev-NAT id -> the address it names
    for f in (4, 6):
        svcs = entries[(SERVICES, f)]
        backends = entries[(BACKENDS, f)]
        revnat = entries[(REVNAT, f)]
        used_slots: set[tuple] = set()
        used_revs: set[int] = set()
        for key, val in svcs.items():
            ip, port, proto, scope, slot = key
            if slot != 0:
                continue
            _, aff, count, qcount, rev_id, flags, alg = val
            fe_slots = _decode_slots(key, count + qcount, svcs, backends, st.backend_ids)
            addr = (ip, port, proto)
            if (fe_slots is None or revnat.get((rev_id,)) != (ip, port)
                    or rev_addr.get(rev_id, addr) != addr):
                log.warning("frontend %s:%d is inconsistent in the maps: rewritten", ip, port)
                continue
            rev_addr[rev_id] = addr
            bes = [b for b, _ in fe_slots]
            fe = Frontend(ip, port, proto, scope, flags, tuple(bes[:count]), aff, alg,
                          terminating=tuple(bes[count:]))
            st.frontends[fe.key] = (fe, rev_id)
            used_slots.add(key)
            used_slots.update(key[:4] + (i,) for i in range(1, count + qcount + 1))
            used_revs.add(rev_id)
            st.backend_ids.update((b.key, bid) for b, bid in fe_slots)
        st.stray.extend(Op(SERVICES, f, k, None) for k in svcs if k not in used_slots)
        live_ids = set(st.backend_ids.values())
        st.stray.extend(Op(BACKENDS, f, k, None) for k in backends if k[0] not in live_ids)
        st.stray.extend(Op(REVNAT, f, k, None) for k in revnat if k[0] not in used_revs)
    _check_affinity_entries(st, entries[(AFFMATCH, 0)])
    return st


def _decode_slots(key: tuple, n: int, svcs: dict, backends: dict,
                  known: dict[tuple[str, int, int], int]) -> list[tuple[Backend, int]] | None:
    """The backends of a master's slots, or None if one is missing or a
    backend appears under another id than elsewhere."""
    out = []
    seen: dict[tuple, int] = {}
    for i in range(1, n + 1):
        slot_val = svcs.get(key[:4] + (i,))
        b = backends.get((slot_val[0],)) if slot_val else None
        if b is None:
            return None
        bip, bport, bproto, _state, bflags, _zone = b
        be = Backend(bip, bport, bproto, bool(bflags & L.BACKEND_F_LOCAL))
        bid = slot_val[0]
        if known.get(be.key, bid) != bid or seen.setdefault(be.key, bid) != bid:
            return None
        out.append((be, bid))
    return out


def _check_affinity_entries(st: KernelState, have: dict[tuple, tuple]) -> None:
    """Membership entries of adopted ClientIP frontends must all be there;
    a frontend missing some is not adopted (rewritten whole), and entries no
    adopted frontend accounts for are stray."""
    wanted: set[tuple] = set()
    dropped: dict[int, int] = {}  # rev-NAT id -> family, of frontends not adopted
    for key, (fe, rev_id) in list(st.frontends.items()):
        if not fe.flags & L.ServiceFlag.AFFINITY:
            continue
        entries = {(st.backend_ids[b.key], rev_id, fe.scope) for b in fe.backends}
        if entries <= have.keys():
            wanted |= entries
        else:
            del st.frontends[key]
            fam = 6 if ":" in fe.ip else 4
            dropped[rev_id] = fam
            st.stray.extend(Op(SERVICES, fam, key + (i,), None)
                            for i in range(len(fe.slots) + 1))
    st.stray.extend(Op(AFFMATCH, 0, k, None) for k in have if k not in wanted)
    adopted_revs = {rev_id for _, rev_id in st.frontends.values()}
    st.stray.extend(Op(REVNAT, fam, (rev_id,), None) for rev_id, fam in dropped.items()
                    if rev_id not in adopted_revs)


def with_tc_state(st: KernelState, tc_maps: Any) -> KernelState:
    """Add what the TC-path maps hold: each adopted frontend's source ranges
    (from the tries, by rev-NAT id) and the entries in use, so capacity
    counts them; strays among them go at the first full sync."""
    ranges: dict[int, list[str]] = {}
    st.tc_used = {(MAGLEV, 0): len(list(tc_maps.lb_maglev.keys()))}
    for fam, trie, to_ip in ((4, tc_maps.lb4_srcrange, L.from_ip4),
                             (6, tc_maps.lb6_srcrange, L.from_ip6)):
        keys = list(trie.keys())
        st.tc_used[(SRCRANGE, fam)] = len(keys)
        for k in keys:
            cidr = f"{to_ip(k.address)}/{k.prefixlen - L.SRC_RANGE_PREFIX_BITS}"
            ranges.setdefault(k.rev_nat_id, []).append(cidr)
    for key, (fe, rev_id) in list(st.frontends.items()):
        if fe.flags & L.ServiceFlag.SOURCE_RANGE and rev_id in ranges:
            st.frontends[key] = (dataclasses.replace(fe, source_ranges=tuple(
                sorted(ranges[rev_id]))), rev_id)
    return st
