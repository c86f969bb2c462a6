"""Turns frontend changes into ordered, batched map operations (pure).

It owns the bookkeeping the maps need: stable service (rev-NAT) ids and
reference-counted backend ids, which frontend belongs to which Service, and
how full each map is. Every sync is executed in phases so that no lookup in
the kernel can ever see a slot pointing at a missing backend or a master
entry counting a slot that does not exist yet (make-before-break):

  1 new backends, 2 new rev-NAT entries, 3 slots, 4 master entries
  (writes and deletes), 5 surplus slots, 6 freed rev-NAT ids, 7 freed backends.

Capacity is checked per Service before anything is written, so a Service the
maps cannot hold is refused with a clear error and keeps its last good state,
and the others are applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.frontends import Backend, Frontend

ServiceKey = tuple[str, str]
# Logical map names; the writer picks the v4 or v6 map from the address.
SERVICES, BACKENDS, REVNAT = "services", "backends", "revnat"
AFFMATCH = "affmatch"  # family-less (0): backend id, rev-NAT id, scope -> 1
NPHASES = 7
MAX_REV_ID = 0xFFFF
MAX_BACKEND_ID = 0xFFFFFFFF


def family(ip: str) -> int:
    return 6 if ":" in ip else 4 if ip else 0


class Op(NamedTuple):
    """One map write (value) or delete (value None). A tuple: a full sync makes 200k."""

    map: str  # SERVICES | BACKENDS | REVNAT
    family: int
    key: tuple
    value: tuple | None  # None: delete


class MapWriter(Protocol):
    """Executes phases in order; each phase may be batched per map."""

    def run(self, phases: list[list[Op]]) -> None: ...

    def capacity(self) -> Mapping[tuple[str, int], int]: ...


@dataclass
class KernelState:
    """What the maps hold, decoded (see `adopt`)."""

    # frontend key -> (frontend, rev-NAT id)
    frontends: dict[tuple, tuple[Frontend, int]] = field(default_factory=dict)
    backend_ids: dict[tuple[str, int, int], int] = field(default_factory=dict)
    stray: list[Op] = field(default_factory=list)  # deletes for orphaned entries


def master_value(fe: Frontend, rev_id: int) -> tuple:
    # (backend_id, affinity_timeout, count, qcount, rev_nat_id, flags, algorithm)
    return (0, fe.affinity_timeout, len(fe.backends), len(fe.terminating), rev_id, fe.flags,
            fe.algorithm)


def backend_value(b: Backend) -> tuple:
    # (ip, port, proto, state, flags, zone)
    return (b.ip, b.port, b.proto, L.BackendState.ACTIVE, L.BACKEND_F_LOCAL if b.local else 0, 0)


class CapacityError(Exception):
    pass


class Reconciler:
    def __init__(self, writer: MapWriter, adopted: KernelState | None = None) -> None:
        self.writer = writer
        self.kernel: dict[tuple, Frontend] = {}
        self.owner: dict[tuple, ServiceKey | None] = {}
        self.by_service: dict[ServiceKey, set[tuple]] = {}
        self.rev_ids: dict[tuple[str, int, int], int] = {}
        self.rev_refs: dict[int, int] = {}
        self.backend_ids: dict[tuple[str, int, int], int] = {}
        self.backend_refs: dict[int, int] = {}
        self.backends: dict[int, Backend] = {}
        self.used: dict[tuple[str, int], int] = {}
        self._next_rev, self._next_backend = 1, 1
        self._free_rev: list[int] = []
        self._free_backend: list[int] = []
        self._freed_rev: list[int] = []
        self.last_ops = 0  # map writes and deletes of the last apply()
        self.last_released: list[Backend] = []  # backends the last apply() removed
        self._unused: set[int] = set()  # backend ids whose count fell to zero
        self._stray: list[Op] = []
        if adopted:
            self._adopt(adopted)

    # -- adoption of what a previous agent left in the pinned maps ----------
    def _adopt(self, st: KernelState) -> None:
        for key, (fe, rev_id) in st.frontends.items():
            self.kernel[key] = fe
            self.owner[key] = None  # claimed by the first Service that wants it
            self.rev_ids.setdefault(fe.addr, rev_id)
            self.rev_refs[rev_id] = self.rev_refs.get(rev_id, 0) + 1
            self._count(SERVICES, fe.ip, 1 + len(fe.slots))
        for bkey, bid in st.backend_ids.items():
            self.backend_ids[bkey] = bid
            self.backend_refs.setdefault(bid, 0)
            self.backends[bid] = Backend(*bkey)
            self._count(BACKENDS, bkey[0], 1)
        for fe in self.kernel.values():
            for b in fe.slots:
                self.backend_refs[self.backend_ids[b.key]] += 1
        for addr in self.rev_ids:
            self._count(REVNAT, addr[0], 1)
        for fe in self.kernel.values():
            self._count(AFFMATCH, "", len(self._affinity_entries(fe)))
        self._next_rev = max(self.rev_refs, default=0) + 1
        self._next_backend = max(self.backend_refs, default=0) + 1
        self._unused = {i for i, n in self.backend_refs.items() if n == 0}  # orphans go
        self._stray = list(st.stray)

    # -- bookkeeping --------------------------------------------------------
    def _count(self, m: str, ip: str, n: int) -> None:
        k = (m, family(ip))
        self.used[k] = self.used.get(k, 0) + n

    def _alloc(self, free: list[int], nxt: str, limit: int) -> int:
        if free:
            return free.pop()
        val = getattr(self, nxt)
        if val > limit:
            raise CapacityError("id space exhausted")
        setattr(self, nxt, val + 1)
        return val

    def frontends_of(self, svc: ServiceKey) -> list[Frontend]:
        return [self.kernel[k] for k in sorted(self.by_service.get(svc, ()))]

    def rev_id(self, fe: Frontend) -> int | None:
        return self.rev_ids.get(fe.addr)

    # -- the sync -----------------------------------------------------------
    def apply(self, changes: Mapping[ServiceKey, Iterable[Frontend]],
              prune_unowned: bool = False) -> dict[ServiceKey, str | None]:
        """Make the maps hold `changes` (the complete frontend list of each
        Service named; an empty list removes it). With `prune_unowned`, also
        remove frontends no Service claims (after a full initial sync).
        Returns per Service None (ok) or why it was refused."""
        phases: list[list[Op]] = [[] for _ in range(NPHASES)]
        status: dict[ServiceKey, str | None] = {}
        for svc in sorted(changes):
            try:
                self._plan_service(svc, list(changes[svc]), phases)
                status[svc] = None
            except CapacityError as exc:
                status[svc] = str(exc)
        if prune_unowned:
            for key in [k for k, o in self.owner.items() if o is None]:
                self._remove_frontend(key, phases)
            phases[4].extend(op for op in self._stray if op.map == SERVICES)
            phases[5].extend(op for op in self._stray if op.map == REVNAT)
            phases[6].extend(op for op in self._stray if op.map == BACKENDS)
            self._stray = []
        self._release(phases)
        self.last_ops = sum(len(p) for p in phases)
        self.writer.run([p for p in phases if p])
        return status

    def _plan_service(self, svc: ServiceKey, wanted: list[Frontend],
                      phases: list[list[Op]]) -> None:
        new: dict[tuple, Frontend] = {}
        for fe in wanted:
            holder = self.owner.get(fe.key)
            if fe.key in new or (holder is not None and holder != svc):
                raise CapacityError(
                    f"frontend {fe.ip}:{fe.port}/{fe.proto} is already used by "
                    f"{'/'.join(holder or svc)}")
            if len(fe.slots) > L.MAX_SLOTS:
                raise CapacityError(f"{len(fe.slots)} backends exceed {L.MAX_SLOTS}")
            new[fe.key] = fe
        old_keys = self.by_service.get(svc, set())
        self._check_capacity(old_keys, new)
        for key in old_keys - new.keys():
            self._remove_frontend(key, phases)
        for key, fe in new.items():
            self._put_frontend(fe, phases)
            self.owner[key] = svc
        if new:
            self.by_service[svc] = set(new)
        else:
            self.by_service.pop(svc, None)

    def _check_capacity(self, old_keys: set[tuple], new: dict[tuple, Frontend]) -> None:
        need: dict[tuple[str, int], int] = {}
        new_backends: set[tuple[str, int, int]] = set()
        ids = self.backend_ids
        for key, fe in new.items():
            fam = family(fe.ip)
            old = self.kernel.get(key)
            if fe.flags & L.ServiceFlag.AFFINITY:
                need[(AFFMATCH, 0)] = need.get((AFFMATCH, 0), 0) + len(fe.backends)
            k = (SERVICES, fam)
            need[k] = need.get(k, 0) + len(fe.slots) + 1 - (1 + len(old.slots) if old else 0)
            if fe.addr not in self.rev_ids:
                need[(REVNAT, fam)] = need.get((REVNAT, fam), 0) + 1
            new_backends.update(b.key for b in fe.slots if b.key not in ids)
        for bkey in new_backends:
            k = (BACKENDS, family(bkey[0]))
            need[k] = need.get(k, 0) + 1
        for key in old_keys - new.keys():
            k = (SERVICES, family(key[0]))
            need[k] = need.get(k, 0) - (1 + len(self.kernel[key].slots))
        cap = self.writer.capacity()
        for k, n in need.items():
            if n > 0 and self.used.get(k, 0) + n > cap.get(k, 0):
                raise CapacityError(
                    f"map {k[0]} (IPv{k[1]}) is full: needs {n} more entries, "
                    f"{cap.get(k, 0) - self.used.get(k, 0)} free of {cap.get(k, 0)}")

    def _put_frontend(self, fe: Frontend, phases: list[list[Op]]) -> None:
        old = self.kernel.get(fe.key)
        if old is not None and old.kernel_view() == fe.kernel_view():
            self.kernel[fe.key] = fe  # only the name may differ
            return
        fam = family(fe.ip)
        rev_id = self.rev_ids.get(fe.addr)
        old_match = self._affinity_entries(old) if old else set()
        if rev_id is None:
            rev_id = self._alloc(self._free_rev, "_next_rev", MAX_REV_ID)
            self.rev_ids[fe.addr] = rev_id
            self.rev_refs[rev_id] = 0
            phases[1].append(Op(REVNAT, fam, (rev_id,), (fe.ip, fe.port)))
            self._count(REVNAT, fe.ip, 1)
        if old is None:
            self.rev_refs[rev_id] += 1
        ip, port, proto, scope = fe.key
        old_backends = old.slots if old else ()
        slots = fe.slots
        # The hot loop of a full sync (one pass per endpoint): locals only.
        ids, refs, put_slot = self.backend_ids, self.backend_refs, phases[2].append
        n_old = len(old_backends)
        for i, b in enumerate(slots, start=1):
            bkey = (b.ip, b.port, b.proto)
            bid = ids.get(bkey)
            if bid is None:
                bid = self._new_backend(b, phases)
            refs[bid] += 1
            if i > n_old or old_backends[i - 1] != b:
                put_slot(Op(SERVICES, fam, (ip, port, proto, scope, i), (bid, 0, 0, 0, 0, 0, 0)))
        for b in old_backends:
            self._unref(ids[b.key])
        self.kernel[fe.key] = fe  # (rev id known now: _affinity_entries reads it)
        new_match = self._affinity_entries(fe)
        phases[2].extend(Op(AFFMATCH, 0, k, (1,)) for k in sorted(new_match - old_match))
        phases[3].append(Op(SERVICES, fam, (ip, port, proto, scope, 0), master_value(fe, rev_id)))
        for i in range(len(fe.slots) + 1, len(old_backends) + 1):
            phases[4].append(Op(SERVICES, fam, (ip, port, proto, scope, i), None))
        phases[5].extend(Op(AFFMATCH, 0, k, None) for k in sorted(old_match - new_match))
        self._count(AFFMATCH, "", len(new_match) - len(old_match))
        self._count(SERVICES, fe.ip, len(fe.slots) - len(old_backends) + (0 if old else 1))

    def _affinity_entries(self, fe: Frontend) -> set[tuple[int, int, int]]:
        """Membership entries the BPF affinity check needs (ClientIP frontends)."""
        if not fe.flags & L.ServiceFlag.AFFINITY:
            return set()
        rev_id = self.rev_ids[fe.addr]
        return {(self.backend_ids[b.key], rev_id, fe.scope) for b in fe.backends}

    def _new_backend(self, b: Backend, phases: list[list[Op]]) -> int:
        bid = self._alloc(self._free_backend, "_next_backend", MAX_BACKEND_ID)
        self.backend_ids[b.key] = bid
        self.backend_refs[bid] = 0
        self._unused.add(bid)  # until referenced
        self.backends[bid] = b
        phases[0].append(Op(BACKENDS, family(b.ip), (bid,), backend_value(b)))
        self._count(BACKENDS, b.ip, 1)
        return bid

    def _remove_frontend(self, key: tuple, phases: list[list[Op]]) -> None:
        fe = self.kernel[key]
        match = self._affinity_entries(fe)
        phases[5].extend(Op(AFFMATCH, 0, k, None) for k in sorted(match))
        self._count(AFFMATCH, "", -len(match))
        del self.kernel[key]
        self.owner.pop(key, None)
        fam = family(fe.ip)
        ip, port, proto, scope = key
        phases[3].append(Op(SERVICES, fam, (ip, port, proto, scope, 0), None))
        for i, b in enumerate(fe.slots, start=1):
            phases[4].append(Op(SERVICES, fam, (ip, port, proto, scope, i), None))
            self._unref(self.backend_ids[b.key])
        self._count(SERVICES, fe.ip, -(1 + len(fe.slots)))
        rev_id = self.rev_ids[fe.addr]
        self.rev_refs[rev_id] -= 1
        if self.rev_refs[rev_id] == 0:
            # Freed only after planning (in _release), so no frontend of this
            # same sync can be given the id whose entry phase 5 deletes.
            del self.rev_refs[rev_id], self.rev_ids[fe.addr]
            self._freed_rev.append(rev_id)
            phases[5].append(Op(REVNAT, fam, (rev_id,), None))
            self._count(REVNAT, fe.ip, -1)

    def _unref(self, bid: int) -> None:
        self.backend_refs[bid] -= 1
        if self.backend_refs[bid] == 0:
            self._unused.add(bid)

    def _release(self, phases: list[list[Op]]) -> None:
        self._free_rev.extend(self._freed_rev)
        self._freed_rev = []
        self.last_released = []
        # Only ids whose count reached zero are candidates: no scan of every
        # backend, so one endpoint change costs O(that service).
        unused, self._unused = self._unused, set()
        for bid in sorted(i for i in unused if self.backend_refs.get(i) == 0):
            b = self.backends.pop(bid)
            self.last_released.append(b)
            del self.backend_refs[bid], self.backend_ids[b.key]
            self._free_backend.append(bid)
            phases[6].append(Op(BACKENDS, family(b.ip), (bid,), None))
            self._count(BACKENDS, b.ip, -1)
