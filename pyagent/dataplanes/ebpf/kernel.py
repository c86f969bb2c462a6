"""The reconciler's MapWriter over the real pinned maps, and the reverse:
decoding the maps into frontends (for adoption on restart and `maps dump`)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping

from pyagent.dataplanes.ebpf import codec
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.frontends import Backend, Frontend
from pyagent.dataplanes.ebpf.programs import LBMaps
from pyagent.dataplanes.ebpf.reconciler import (
    AFFMATCH,
    BACKENDS,
    REVNAT,
    SERVICES,
    KernelState,
    Op,
)

log = logging.getLogger(__name__)


def _map(maps: LBMaps, m: str, family: int):
    return getattr(maps, {SERVICES: f"lb{family}_services", BACKENDS: f"lb{family}_backends",
                          REVNAT: f"lb{family}_revnat", AFFMATCH: "lb_aff_match"}[m])


LOGICAL = [(m, f) for m in (SERVICES, BACKENDS, REVNAT) for f in (4, 6)] + [(AFFMATCH, 0)]


class KernelWriter:
    """Runs each phase as one batched update and one batched delete per map.
    Within a phase, deletes go after updates (phases never need both for one key)."""

    def __init__(self, maps: LBMaps) -> None:
        self.maps = maps
        self._capacity = {(m, f): _map(maps, m, f).max_entries for m, f in LOGICAL}

    def capacity(self) -> Mapping[tuple[str, int], int]:
        return self._capacity

    def run(self, phases: list[list[Op]]) -> None:
        for phase in phases:
            puts: dict[tuple[str, int], tuple[list[tuple], list[tuple]]] = {}
            dels: dict[tuple[str, int], list[tuple]] = {}
            for op in phase:
                if op.value is None:
                    dels.setdefault((op.map, op.family), []).append(op.key)
                else:
                    ks, vs = puts.setdefault((op.map, op.family), ([], []))
                    ks.append(op.key)
                    vs.append(op.value)
            for (m, f), (ks, vs) in puts.items():
                _map(self.maps, m, f).update_many_raw(codec.pack_keys(m, f, ks),
                                                      codec.pack_values(m, f, vs))
                if m == BACKENDS:
                    self._reset_backend_counters(k[0] for k in ks)
            for (m, f), ks in dels.items():
                _map(self.maps, m, f).delete_many_raw(codec.pack_keys(m, f, ks))

    def _reset_backend_counters(self, ids: Iterable[int]) -> None:
        """A backend id may be reused: its counters start again from zero."""
        stats = self.maps.lb_be_stats
        keys = [i for i in ids if i < stats.max_entries]
        if keys:
            zero = bytes(8 * stats.ncpus)
            stats.update_many_raw(struct.pack(f"<{len(keys)}I", *keys), zero * len(keys))


def read_entries(maps: LBMaps) -> dict[tuple[str, int], dict[tuple, tuple]]:
    """Every services/backends/revnat entry, decoded to logical tuples."""
    return {(m, f): {codec.unpack_key(m, f, k): codec.unpack_value(m, f, v)
                     for k, v in _map(maps, m, f).items_raw()} for m, f in LOGICAL}


def decode(entries: dict[tuple[str, int], dict[tuple, tuple]]) -> KernelState:
    """Rebuild frontends and ids from map entries; what is inconsistent (a
    slot past the count, a backend nobody references, a rev-NAT entry of no
    frontend, a master whose slot is missing) becomes a delete in `stray`."""
    st = KernelState()
    for f in (4, 6):
        svcs = entries[(SERVICES, f)]
        backends = entries[(BACKENDS, f)]
        used_slots: set[tuple] = set()
        used_revs: set[int] = set()
        for key, val in svcs.items():
            ip, port, proto, scope, slot = key
            if slot != 0:
                continue
            _, aff, count, qcount, rev_id, flags, alg = val
            bes = []
            for i in range(1, count + qcount + 1):
                skey = (ip, port, proto, scope, i)
                slot_val = svcs.get(skey)
                b = backends.get((slot_val[0],)) if slot_val else None
                if b is None:
                    log.warning("frontend %s:%d has no backend in slot %d", ip, port, i)
                    break
                used_slots.add(skey)
                bip, bport, bproto, _state, bflags, _zone = b
                be = Backend(bip, bport, bproto, bool(bflags & L.BACKEND_F_LOCAL))
                bes.append(be)
                st.backend_ids[be.key] = slot_val[0]
            else:
                fe = Frontend(ip, port, proto, scope, flags, tuple(bes[:count]), aff, alg,
                              terminating=tuple(bes[count:]))
                st.frontends[fe.key] = (fe, rev_id)
                used_slots.add(key)
                used_revs.add(rev_id)
                continue
            # A broken frontend is not adopted: all its entries are stray and
            # the desired state writes it anew.
        st.stray.extend(Op(SERVICES, f, k, None) for k in svcs if k not in used_slots)
        live_ids = set(st.backend_ids.values())
        st.stray.extend(Op(BACKENDS, f, k, None) for k in backends if k[0] not in live_ids)
        st.stray.extend(Op(REVNAT, f, k, None) for k in entries[(REVNAT, f)]
                        if k[0] not in used_revs)
    _check_affinity_entries(st, entries[(AFFMATCH, 0)])
    return st


def _check_affinity_entries(st: KernelState, have: dict[tuple, tuple]) -> None:
    """Membership entries of adopted ClientIP frontends must all be there;
    a frontend missing some is not adopted (rewritten whole), and entries no
    adopted frontend accounts for are stray."""
    wanted: set[tuple] = set()
    for key, (fe, rev_id) in list(st.frontends.items()):
        if not fe.flags & L.ServiceFlag.AFFINITY:
            continue
        entries = {(st.backend_ids[b.key], rev_id, fe.scope) for b in fe.backends}
        if entries <= have.keys():
            wanted |= entries
        else:
            del st.frontends[key]
            fam = 6 if ":" in fe.ip else 4
            st.stray.extend(Op(SERVICES, fam, key + (i,), None)
                            for i in range(len(fe.slots) + 1))
    st.stray.extend(Op(AFFMATCH, 0, k, None) for k in have if k not in wanted)
