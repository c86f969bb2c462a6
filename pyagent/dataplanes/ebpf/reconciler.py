"""Turns frontend changes into ordered, batched map operations (pure).

It is the one writer of every map family of the eBPF datapath (services,
backends, rev-NAT, affinity match, and on the TC path source ranges and
Maglev tables) and owns the bookkeeping they need: stable service (rev-NAT)
ids and reference-counted backend ids, which frontend belongs to which
Service, which Services have Maglev tables, and how full each map and id
space is (capacity.Ledger). After each apply, last_frontend_status says per
frontend whether it was programmed; frontends(), frontends_of(), rev_id()
and backend_id() are the read API. Every sync is executed
in phases so that no lookup in the kernel can ever see a slot pointing at a
missing backend or a master entry counting a slot that does not exist yet
(make-before-break):

  1 new backends, 2 new rev-NAT entries, 3 slots, 4 master entries
  (writes and deletes), 5 surplus slots, 6 freed rev-NAT ids, 7 freed backends.

A large sync runs these phases once per batch of Services (freed backends
only in the last), so its map operations are never all in memory at once.

Capacity is all-or-nothing per Service: everything a Service needs (map
entries, slots, ids, affinity membership, Maglev tables, source ranges) is
counted and checked before any of it is planned, so a Service the maps
cannot hold is refused with an error naming the map, keeps its last good
state, and none of its new entries is written.

Who wins when capacity runs out: Services are planned in the order the
caller gives (the dataplane: oldest creationTimestamp first, then
namespace/name), and what is programmed is never taken away to make room,
so a newer Service never evicts an older one. Entries freed by a sync count
as free once their deletes ran; Services refused for room are then tried
once more in the same apply.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

from pyagent.core.model import join_host_port
from pyagent.dataplanes.base import Refusal
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.capacity import (
    AFFMATCH,
    BACKEND_IDS,
    BACKENDS,
    FRONTEND_CONFLICT,
    MAGLEV,
    MAP_FULL,
    MAX_BACKEND_ID,
    MAX_REV_ID,
    REV_IDS,
    REVNAT,
    SERVICES,
    SRCRANGE,
    TOO_MANY_BACKENDS,
    CapacityError,
    Ledger,
    Resource,
)
from pyagent.dataplanes.ebpf.frontends import Backend, Frontend

__all__ = ["AFFMATCH", "BACKENDS", "REVNAT", "SERVICES", "MAX_REV_ID", "MAX_BACKEND_ID",
           "CapacityError", "KernelState", "Op", "Phase", "Reconciler"]

ServiceKey = tuple[str, str]
NPHASES = 7
FLUSH_OPS = 5_000  # map operations planned before a large sync writes a batch
TC_KINDS = (MAGLEV, SRCRANGE)  # written after the phases (TcWriter.write_tc)
LB_KINDS = (SERVICES, BACKENDS, REVNAT, AFFMATCH, REV_IDS, BACKEND_IDS)
# Plain ints for the per-frontend and per-endpoint paths: an IntFlag's `&`
# and an enum member's lookup run Python code.
_AFFINITY = int(L.ServiceFlag.AFFINITY)
_ACTIVE = int(L.BackendState.ACTIVE)


def family(ip: str) -> int:
    return 6 if ":" in ip else 4 if ip else 0


class Op(NamedTuple):
    """One map write (value) or delete (value None). A tuple: a full sync makes 200k."""

    map: str  # SERVICES | BACKENDS | REVNAT | AFFMATCH
    family: int
    key: tuple
    value: tuple | None  # None: delete


MapKey = tuple[str, int]  # (map, family)


class Phase:
    """One phase's map operations, kept grouped as a writer runs them: per
    map the keys and values to write, and the keys to delete. A full sync
    plans 200k+ of them: appending to these lists instead of making an Op
    each, which the writer then regrouped, took a fifth off a full sync of
    10,000 x 10. Iterating gives Ops, each map's writes before its deletes
    (the order the kernel writer runs them in)."""

    __slots__ = ("puts", "dels")

    def __init__(self) -> None:
        self.puts: dict[MapKey, tuple[list[tuple], list[tuple]]] = {}
        self.dels: dict[MapKey, list[tuple]] = {}

    def writes(self, m: str, fam: int) -> tuple[list[tuple], list[tuple]]:
        """The (keys, values) lists of map m in family fam, to append to."""
        lists = self.puts.get((m, fam))
        if lists is None:
            lists = self.puts[(m, fam)] = ([], [])
        return lists

    def deletes(self, m: str, fam: int) -> list[tuple]:
        keys = self.dels.get((m, fam))
        if keys is None:
            keys = self.dels[(m, fam)] = []
        return keys

    def put(self, m: str, fam: int, key: tuple, value: tuple) -> None:
        keys, values = self.writes(m, fam)
        keys.append(key)
        values.append(value)

    def delete(self, m: str, fam: int, key: tuple) -> None:
        self.deletes(m, fam).append(key)

    def append(self, op: Op) -> None:
        if op.value is None:
            self.deletes(op.map, op.family).append(op.key)
        else:
            self.put(op.map, op.family, op.key, op.value)

    def __len__(self) -> int:
        return (sum(len(keys) for keys, _ in self.puts.values())
                + sum(map(len, self.dels.values())))

    def __iter__(self) -> Iterator[Op]:
        for (m, fam), (keys, values) in self.puts.items():
            for key, value in zip(keys, values, strict=True):
                yield Op(m, fam, key, value)
        for (m, fam), keys in self.dels.items():
            for key in keys:
                yield Op(m, fam, key, None)


class MapWriter(Protocol):
    """Executes phases in order; each phase may be batched per map. A writer
    with `has_tc` also holds the TC path's maps (source ranges, Maglev)."""

    def run(self, phases: list[Phase]) -> None: ...

    def capacity(self) -> Mapping[tuple[str, int], int]: ...


class TcWriter(MapWriter, Protocol):
    has_tc: bool

    def write_tc(self, ranges: Mapping[int, tuple[str, ...]],
                 tables: Mapping[int, list[tuple[int, str]]], prune: bool) -> None: ...


@dataclass
class KernelState:
    """What the maps hold, decoded (see `adopt`)."""

    # frontend key -> (frontend, rev-NAT id)
    frontends: dict[tuple, tuple[Frontend, int]] = field(default_factory=dict)
    backend_ids: dict[tuple[str, int, int], int] = field(default_factory=dict)
    stray: list[Op] = field(default_factory=list)  # deletes for orphaned entries
    # entries of the TC-path maps (Maglev tables, source ranges), by resource
    tc_used: dict[Resource, int] = field(default_factory=dict)


def master_value(fe: Frontend, rev_id: int) -> tuple:
    # (backend_id, affinity_timeout, count, qcount, rev_nat_id, flags, algorithm)
    return (0, fe.affinity_timeout, len(fe.backends), len(fe.terminating), rev_id, fe.flags,
            fe.algorithm)


def backend_value(b: Backend) -> tuple:
    # (ip, port, proto, state, flags, zone)
    return (b.ip, b.port, b.proto, _ACTIVE, L.BACKEND_F_LOCAL if b.local else 0, 0)


def maglev_tables(fe: Frontend | None) -> int:
    """Maglev tables a frontend needs (TC path: external scope, with backends)."""
    return int(fe is not None and fe.scope == L.SCOPE_EXTERNAL
               and fe.algorithm == L.Algorithm.MAGLEV and bool(fe.backends))


@functools.lru_cache(maxsize=4096)
def _network(cidr: str) -> tuple[int, str]:
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    return net.version, str(net)


def source_ranges(fe: Frontend | None) -> frozenset[tuple[int, str]]:
    """The source-range trie entries of a frontend, as (family, network)."""
    if fe is None or not fe.source_ranges:
        return frozenset()
    return frozenset(_network(c) for c in fe.source_ranges)


class Reconciler:
    def __init__(self, writer: MapWriter, adopted: KernelState | None = None) -> None:
        self.writer = writer
        self.ledger = Ledger(writer.capacity())
        self._kernel: dict[tuple, Frontend] = {}
        self._owner: dict[tuple, ServiceKey | None] = {}
        # tuples, not sets: a Service has one or a few frontends (216 B a set)
        self._by_service: dict[ServiceKey, tuple[tuple, ...]] = {}
        self._rev_ids: dict[tuple[str, int, int], int] = {}
        self._rev_refs: dict[int, int] = {}
        self._backend_ids: dict[tuple[str, int, int, bool], int] = {}  # by _bkey
        # Indexed by backend id (dense from 1): lists, not dicts, hold 100k
        # backends in 1.6 MiB instead of 10. None: no backend has that id.
        self._backends: list[Backend | None] = [None]
        self._backend_refs: list[int] = [0]
        self._next_rev, self._next_backend = 1, 1
        self._free_rev: list[int] = []  # a stack: pop() gives the lowest first after adopt
        self._free_backend: list[int] = []
        self._freed_rev: list[int] = []
        self.last_ops = 0  # map writes and deletes of the last apply()
        self.last_released: list[Backend] = []  # backends the last apply() removed
        self.last_freed_revs: list[int] = []  # rev-NAT ids the last apply() gave up
        self._unused: set[int] = set()  # backend ids whose count fell to zero
        self._stray: list[Op] = []
        self._reserved_rev: set[int] = set()  # ids of stray entries, free once deleted
        self._reserved_backend: set[int] = set()
        self._maglev_revs: dict[ServiceKey, set[int]] = {}  # Services with Maglev tables
        # per frontend key of the last apply: None (programmed) or why not
        self.last_frontend_status: dict[tuple, str | None] = {}
        if adopted:
            self._adopt(adopted)

    @property
    def used(self) -> dict[Resource, int]:
        return self.ledger.used

    # -- adoption of what a previous agent left in the pinned maps ----------
    def _adopt(self, st: KernelState) -> None:
        led = self.ledger
        for key, (fe, rev_id) in st.frontends.items():
            self._kernel[key] = fe
            self._owner[key] = None  # claimed by the first Service that wants it
            self._rev_ids.setdefault(fe.addr, rev_id)
            self._rev_refs[rev_id] = self._rev_refs.get(rev_id, 0) + 1
            led.add((SERVICES, family(fe.ip)), 1 + len(fe.slots))
        for bkey, bid in st.backend_ids.items():
            b = Backend(*bkey)
            self._backend_ids[b] = bid  # not local: its own key (see _bkey)
            self._set_backend(bid, b)
            led.add((BACKENDS, family(bkey[0])))
        for fe in self._kernel.values():
            for b in fe.slots:
                self._backend_refs[self._backend_ids[_bkey(b)]] += 1
            led.add((AFFMATCH, 0), len(self._affinity_entries(fe)))
        for addr in self._rev_ids:
            led.add((REVNAT, family(addr[0])))
        # Stray entries stay in the maps until the first full sync deletes
        # them: they take room, and their ids must not be handed out before.
        for op in st.stray:
            led.add((op.map, op.family))
            if op.map == REVNAT and op.key[0] not in self._rev_refs:
                self._reserved_rev.add(op.key[0])
            elif op.map == BACKENDS and not self._has_backend(op.key[0]):
                self._reserved_backend.add(op.key[0])
        for res, n in st.tc_used.items():
            led.add(res, n)
        self._next_rev, self._free_rev = _id_space(set(self._rev_refs) | self._reserved_rev)
        in_use = {bid for bid, _ in self.backend_ids_in_use()}
        self._next_backend, self._free_backend = _id_space(in_use | self._reserved_backend)
        led.add((REV_IDS, 0), len(set(self._rev_refs) | self._reserved_rev))
        led.add((BACKEND_IDS, 0), len(in_use | self._reserved_backend))
        self._unused = {i for i in in_use if self._backend_refs[i] == 0}  # orphans go
        self._stray = list(st.stray)

    # -- bookkeeping --------------------------------------------------------
    def _set_backend(self, bid: int, b: Backend) -> None:
        """Record backend id `bid` (no references yet)."""
        if bid >= len(self._backends):  # grown in steps
            grow = max(bid + 1 - len(self._backends), 4096)
            self._backends.extend([None] * grow)
            self._backend_refs.extend([0] * grow)
        self._backends[bid] = b
        self._backend_refs[bid] = 0

    def _has_backend(self, bid: int) -> bool:
        return bid < len(self._backends) and self._backends[bid] is not None

    def _alloc(self, free: list[int], nxt: str, limit: int) -> int:
        if free:
            return free.pop()
        val = getattr(self, nxt)
        if val > limit:  # the capacity check counts ids: this is a bug
            raise RuntimeError(f"no id left below {limit} after a passed capacity check")
        setattr(self, nxt, val + 1)
        return val

    def frontends_of(self, svc: ServiceKey) -> list[Frontend]:
        return [self._kernel[k] for k in sorted(self._by_service.get(svc, ()))]

    def rev_id(self, fe: Frontend) -> int | None:
        return self._rev_ids.get(fe.addr)

    # -- the typed read API (observers, stats): no dict of ours leaves ---------
    def frontends(self) -> list[Frontend]:
        """Every frontend the maps hold, in key order."""
        return [self._kernel[k] for k in sorted(self._kernel)]

    def backend_ids_in_use(self) -> list[tuple[int, Backend]]:
        """(backend id, backend) of every backend in the maps."""
        return [(bid, b) for bid, b in enumerate(self._backends) if b is not None]

    def backend_id(self, b: Backend) -> int | None:
        return self._backend_ids.get(_bkey(b))

    def state(self) -> KernelState:
        """A copy of what the maps hold as this reconciler wrote them: what a
        restarted agent adopts from the kernel."""
        return KernelState(
            frontends={k: (f, self._rev_ids[f.addr]) for k, f in self._kernel.items()},
            backend_ids={k[:3]: bid for k, bid in self._backend_ids.items()})

    def pressure(self) -> dict[str, float]:
        return self.ledger.pressure()

    # -- the sync -----------------------------------------------------------
    def apply(self, changes: Mapping[ServiceKey, Iterable[Frontend]],
              prune_unowned: bool = False,
              order: Callable[[ServiceKey], Any] | None = None) -> dict[ServiceKey, str | None]:
        """Make the maps hold `changes` (the complete frontend list of each
        Service named; an empty list removes it), planning Services in
        `order` (a sort key; default namespace/name). With `prune_unowned`
        (a full sync: `changes` names every Service), Services not named and
        frontends no Service claims (adopted ones) are removed.
        Returns per Service None (ok) or why it was refused (a Refusal)."""
        # The dataplane wrote the TC-path maps of the previous apply by now.
        self.ledger.settle(TC_KINDS)
        if prune_unowned:
            changes = {**{svc: () for svc in self._by_service}, **changes}
        names = sorted(changes, key=order) if order else sorted(changes)
        status: dict[ServiceKey, str | None] = {}
        self.last_ops = 0
        self.last_released, self.last_freed_revs = [], []
        wanted = {svc: list(changes[svc]) for svc in names}
        retry, freed = self._round(names, wanted, status, prune_unowned)
        if retry and freed:
            self._round(retry, wanted, status, False)
        if getattr(self.writer, "has_tc", False):
            self._write_tc(names, prune_unowned)
        self.last_frontend_status = {}
        for svc in names:  # a frontend another Service programmed stays None
            for fe in wanted[svc]:
                if self.last_frontend_status.get(fe.key, "") is not None:
                    self.last_frontend_status[fe.key] = status.get(svc)
        return status

    # -- the TC path's maps: source ranges and Maglev tables, by service id ---
    def _write_tc(self, names: Iterable[ServiceKey], full: bool) -> None:
        """What the TC path needs of the Services as programmed (a refused
        Service keeps its last good state here too), after their master
        entries: until then a new LB frontend would deny every source."""
        programmed = {svc: self.frontends_of(svc) for svc in names}
        writer = cast(TcWriter, self.writer)
        writer.write_tc(self._source_ranges(programmed), self._maglev(programmed, full), full)
        if full:
            self.recount_tc()

    def _source_ranges(self, programmed: Mapping[ServiceKey, list[Frontend]]
                       ) -> dict[int, tuple[str, ...]]:
        """loadBalancerSourceRanges by service id; ids this apply gave up
        lose theirs."""
        desired: dict[int, tuple[str, ...]] = {rev_id: () for rev_id in self.last_freed_revs}
        for fes in programmed.values():
            for fe in fes:
                rev_id = self.rev_id(fe)
                if rev_id is not None and (fe.source_ranges or rev_id not in desired):
                    desired[rev_id] = desired.get(rev_id, ()) + fe.source_ranges
        return desired

    def _maglev(self, programmed: Mapping[ServiceKey, list[Frontend]], full: bool
                ) -> dict[int, list[tuple[int, str]]]:
        """Maglev tables of the EXTERNAL frontends programmed; a Service that
        stopped using Maglev, or went, loses its tables (an empty list)."""
        tables: dict[int, list[tuple[int, str]]] = {}
        for svc, fes in programmed.items():
            revs = set()
            for fe in fes:
                rev_id = self.rev_id(fe)
                if (fe.scope == L.SCOPE_EXTERNAL and fe.algorithm == L.Algorithm.MAGLEV
                        and rev_id is not None):
                    tables[rev_id] = [(self._backend_ids[_bkey(b)], join_host_port(b.ip, b.port))
                                      for b in fe.backends]
                    revs.add(rev_id)
            for gone in self._maglev_revs.get(svc, set()) - revs:
                tables.setdefault(gone, [])
            if revs:
                self._maglev_revs[svc] = revs
            else:
                self._maglev_revs.pop(svc, None)
        for rev_id in self.last_freed_revs:  # e.g. adopted frontends pruned
            tables.setdefault(rev_id, [])
        return tables

    def services(self) -> set[ServiceKey]:
        """The Services that hold frontends."""
        return set(self._by_service)

    def _round(self, names: list[ServiceKey], wanted: Mapping[ServiceKey, list[Frontend]],
               status: dict[ServiceKey, str | None],
               prune_unowned: bool) -> tuple[list[ServiceKey], bool]:
        phases = [Phase() for _ in range(NPHASES)]
        retry: list[ServiceKey] = []
        for planned, svc in enumerate(names, start=1):
            try:
                self._plan_service(svc, wanted[svc], phases)
                status[svc] = None
            except CapacityError as exc:
                status[svc] = Refusal(str(exc), exc.reason, exc.map)
                if exc.reason == MAP_FULL:
                    retry.append(svc)
            # A large sync runs in batches of whole Services, each in phase
            # order: its operations are never all alive at once (a full sync
            # of 100k endpoints makes 200k). Nothing is freed before the end
            # (ids, backends: see _release), so a later batch never reuses
            # what an earlier one deletes. Not with stray entries: _prune must
            # see every write of the sync.
            if planned % 256 == 0 and not self._stray and sum(map(len, phases)) >= FLUSH_OPS:
                self.last_ops += sum(len(p) for p in phases)
                self.writer.run([p for p in phases if p])
                phases = [Phase() for _ in range(NPHASES)]
        if prune_unowned:
            self._prune(phases)
        self._release(phases)
        self.last_ops += sum(len(p) for p in phases)
        self.writer.run([p for p in phases if p])
        return retry, self.ledger.settle(LB_KINDS)

    def _prune(self, phases: list[Phase]) -> None:
        """Frontends no Service holds (adopted and unclaimed, or any whose
        bookkeeping lost its Service) and stray entries go."""
        for key in [k for k, o in self._owner.items()
                    if o is None or k not in self._by_service.get(o, ())]:
            self._remove_frontend(key, phases)
        where = {SERVICES: 4, AFFMATCH: 5, REVNAT: 5, BACKENDS: 6}
        # A stray key this sync writes anew (a slot a killed agent wrote
        # before its master) is overwritten, not deleted.
        written = {(op.map, op.family, op.key) for phase in phases for op in phase
                   if op.value is not None} if self._stray else set()
        for op in self._stray:
            if (op.map, op.family, op.key) not in written:
                phases[where[op.map]].append(op)
            self.ledger.release((op.map, op.family))
            if op.map == REVNAT and op.key[0] in self._reserved_rev:
                self._reserved_rev.discard(op.key[0])
                self._freed_rev.append(op.key[0])
                self.ledger.release((REV_IDS, 0))
            elif op.map == BACKENDS and op.key[0] in self._reserved_backend:
                self._reserved_backend.discard(op.key[0])
                self._free_backend.append(op.key[0])
                self.ledger.release((BACKEND_IDS, 0))
        self._stray = []

    def _plan_service(self, svc: ServiceKey, wanted: list[Frontend],
                      phases: list[Phase]) -> None:
        new: dict[tuple, Frontend] = {}
        for fe in wanted:
            holder = self._owner.get(fe.key)
            if fe.key in new or (holder is not None and holder != svc):
                raise CapacityError(
                    f"frontend {fe.ip}:{fe.port}/{fe.proto} is already used by "
                    f"{'/'.join(holder or svc)}", FRONTEND_CONFLICT)
            if len(fe.slots) > L.MAX_SLOTS:
                raise CapacityError(
                    f"frontend {fe.ip}:{fe.port} has {len(fe.slots)} backends, more than "
                    f"the {L.MAX_SLOTS} slots of a services-map entry (16-bit slot numbers)",
                    TOO_MANY_BACKENDS)
            new[fe.key] = fe
        old_keys = set(self._by_service.get(svc, ()))
        need, id_family = self._needs(old_keys, new)
        self.ledger.check(need, id_family)
        # From here on nothing can fail: the whole Service is planned.
        for key in old_keys - new.keys():
            self._remove_frontend(key, phases)
        for key, fe in new.items():
            self._put_frontend(key, fe, phases)
            self._owner[key] = svc
        if new:
            self._by_service[svc] = tuple(new)
        else:
            self._by_service.pop(svc, None)

    def _needs(self, old_keys: set[tuple],
               new: dict[tuple, Frontend]) -> tuple[dict[Resource, int], int]:
        """What planning `new` in place of `old_keys` adds to each resource:
        exactly what _put_frontend will count (releases do not help, the
        entries they free are deleted after the new ones are written)."""
        need: dict[Resource, int] = {}

        def add(res: Resource, n: int) -> None:
            if n > 0:
                need[res] = need.get(res, 0) + n

        drop: dict[tuple, int] = {}  # addr -> frontends of it this Service removes
        for key in old_keys - new.keys():
            addr = self._kernel[key].addr
            drop[addr] = drop.get(addr, 0) + 1
        new_addrs: set[tuple] = set()
        new_backends: set[tuple] = set()
        id_family = 0
        ids = self._backend_ids
        for key, fe in new.items():
            fam = family(fe.ip)
            old = self._kernel.get(key)
            for rfam, _ in source_ranges(fe) - source_ranges(old):
                add((SRCRANGE, rfam), 1)
            if old is not None and old.kernel_view() == fe.kernel_view():
                continue
            add((MAGLEV, 0), maglev_tables(fe) - maglev_tables(old))
            rev_id = self._rev_ids.get(fe.addr)
            if old is None:
                add((SERVICES, fam), 1 + len(fe.slots))
                fresh = rev_id is None or self._rev_refs[rev_id] == drop.get(fe.addr, 0)
                if fresh and fe.addr not in new_addrs:
                    new_addrs.add(fe.addr)
                    add((REVNAT, fam), 1)
                    add((REV_IDS, 0), 1)
                    id_family = id_family or fam
                    rev_id = None
            else:
                add((SERVICES, fam), len(fe.slots) - len(old.slots))
            for b in fe.slots:  # per endpoint: _bkey inlined
                k = b if not b.local else (b.ip, b.port, b.proto, False)
                if k not in ids:
                    new_backends.add(k)
            if fe.flags & _AFFINITY:
                old_match = self._affinity_entries(old) if old is not None else set()
                members = {k for k in map(_bkey, fe.backends)
                           if rev_id is None or (ids.get(k), rev_id, fe.scope) not in old_match}
                add((AFFMATCH, 0), len(members))
        v6 = sum(1 for bkey in new_backends if ":" in bkey[0])
        add((BACKENDS, 4), len(new_backends) - v6)
        add((BACKENDS, 6), v6)
        add((BACKEND_IDS, 0), len(new_backends))
        return need, id_family or 4

    def _put_frontend(self, key: tuple, fe: Frontend, phases: list[Phase]) -> None:
        """`key` is fe.key, the one tuple every table of ours is keyed with."""
        led = self.ledger
        old = self._kernel.get(key)
        self._count_ranges(old, fe)
        if old is not None and old.kernel_view() == fe.kernel_view():
            self._kernel[key] = fe  # only the name or the source ranges may differ
            return
        fam = family(fe.ip)
        rev_id = self._rev_ids.get(fe.addr)
        old_match = self._affinity_entries(old) if old else set()
        if rev_id is None:
            rev_id = self._alloc(self._free_rev, "_next_rev", led.limits[(REV_IDS, 0)])
            self._rev_ids[fe.addr] = rev_id
            self._rev_refs[rev_id] = 0
            phases[1].put(REVNAT, fam, (rev_id,), (fe.ip, fe.port))
            led.add((REVNAT, fam))
            led.add((REV_IDS, 0))
        if old is None:
            self._rev_refs[rev_id] += 1
        tables = maglev_tables(fe) - maglev_tables(old)
        if tables > 0:
            led.add((MAGLEV, 0), tables)
        else:
            led.release((MAGLEV, 0), -tables)
        ip, port, proto, scope = fe.key
        old_backends = old.slots if old else ()
        slots = fe.slots
        # The hot loop of a full sync (one pass per endpoint): locals only.
        ids, refs = self._backend_ids, self._backend_refs
        slot_keys, slot_values = phases[2].writes(SERVICES, fam)
        n_old = len(old_backends)
        made = made6 = 0
        for i, b in enumerate(slots, start=1):
            bid = ids.get(b if not b.local else (b.ip, b.port, b.proto, False))  # _bkey
            if bid is None:
                bid = self._new_backend(b, phases[0])
                made += 1
                made6 += ":" in b.ip
            refs[bid] += 1
            if i > n_old or old_backends[i - 1] != b:
                slot_keys.append((ip, port, proto, scope, i))
                slot_values.append((bid, 0, 0, 0, 0, 0, 0))
        if made:
            led.add((BACKENDS, 4), made - made6)
            led.add((BACKENDS, 6), made6)
            led.add((BACKEND_IDS, 0), made)
        for b in old_backends:
            self._unref(ids[_bkey(b)])
        self._kernel[key] = fe  # (rev id known now: _affinity_entries reads it)
        new_match = self._affinity_entries(fe)
        for k in sorted(new_match - old_match):
            phases[2].put(AFFMATCH, 0, k, (1,))
        phases[3].put(SERVICES, fam, (ip, port, proto, scope, 0), master_value(fe, rev_id))
        for i in range(len(fe.slots) + 1, len(old_backends) + 1):
            phases[4].delete(SERVICES, fam, (ip, port, proto, scope, i))
        for k in sorted(old_match - new_match):
            phases[5].delete(AFFMATCH, 0, k)
        led.add((AFFMATCH, 0), len(new_match - old_match))
        led.release((AFFMATCH, 0), len(old_match - new_match))
        grown = len(fe.slots) - len(old_backends) + (0 if old else 1)
        if grown > 0:
            led.add((SERVICES, fam), grown)
        else:
            led.release((SERVICES, fam), -grown)

    def _count_ranges(self, old: Frontend | None, new: Frontend | None) -> None:
        before, after = source_ranges(old), source_ranges(new)
        for rfam, _ in after - before:
            self.ledger.add((SRCRANGE, rfam))
        for rfam, _ in before - after:
            self.ledger.release((SRCRANGE, rfam))

    def _affinity_entries(self, fe: Frontend) -> set[tuple[int, int, int]]:
        """Membership entries the BPF affinity check needs (ClientIP frontends)."""
        if not fe.flags & _AFFINITY:
            return set()
        rev_id = self._rev_ids[fe.addr]
        return {(self._backend_ids[_bkey(b)], rev_id, fe.scope) for b in fe.backends}

    def _new_backend(self, b: Backend, phase: Phase) -> int:
        """A backend id and its entry (in `phase`); the caller counts it in
        the ledger."""
        # once per endpoint in a full sync: _alloc, _bkey and Phase.put inlined
        # (_alloc, with getattr/setattr by name, was about 5% of it in a profile)
        if self._free_backend:
            bid = self._free_backend.pop()
        else:
            bid, limit = self._next_backend, self.ledger.limits[(BACKEND_IDS, 0)]
            if bid > limit:  # the capacity check counts ids: this is a bug
                raise RuntimeError(f"no id left below {limit} after a passed capacity check")
            self._next_backend = bid + 1
        self._backend_ids[b if not b.local else (b.ip, b.port, b.proto, False)] = bid
        self._set_backend(bid, b)
        self._unused.add(bid)  # until referenced
        keys, values = phase.writes(BACKENDS, 6 if ":" in b.ip else 4)
        keys.append((bid,))
        values.append(backend_value(b))
        return bid

    def _remove_frontend(self, key: tuple, phases: list[Phase]) -> None:
        led = self.ledger
        fe = self._kernel[key]
        match = self._affinity_entries(fe)
        for k in sorted(match):
            phases[5].delete(AFFMATCH, 0, k)
        led.release((AFFMATCH, 0), len(match))
        led.release((MAGLEV, 0), maglev_tables(fe))
        self._count_ranges(fe, None)
        del self._kernel[key]
        self._owner.pop(key, None)
        fam = family(fe.ip)
        ip, port, proto, scope = key
        phases[3].delete(SERVICES, fam, (ip, port, proto, scope, 0))
        slot_deletes = phases[4].deletes(SERVICES, fam)
        for i, b in enumerate(fe.slots, start=1):
            slot_deletes.append((ip, port, proto, scope, i))
            self._unref(self._backend_ids[_bkey(b)])
        led.release((SERVICES, fam), 1 + len(fe.slots))
        rev_id = self._rev_ids[fe.addr]
        self._rev_refs[rev_id] -= 1
        if self._rev_refs[rev_id] == 0:
            # Freed only after planning (in _release), so no frontend of this
            # same round can be given the id whose entry phase 5 deletes.
            del self._rev_refs[rev_id], self._rev_ids[fe.addr]
            self._freed_rev.append(rev_id)
            self.last_freed_revs.append(rev_id)
            phases[5].delete(REVNAT, fam, (rev_id,))
            led.release((REVNAT, fam))
            led.release((REV_IDS, 0))

    def _unref(self, bid: int) -> None:
        self._backend_refs[bid] -= 1
        if self._backend_refs[bid] == 0:
            self._unused.add(bid)

    def _release(self, phases: list[Phase]) -> None:
        self._free_rev.extend(self._freed_rev)
        self._freed_rev = []
        # Only ids whose count reached zero are candidates: no scan of every
        # backend, so one endpoint change costs O(that service).
        unused, self._unused = self._unused, set()
        backends, refs = self._backends, self._backend_refs
        for bid in sorted(i for i in unused if backends[i] is not None and refs[i] == 0):
            b = backends[bid]
            assert b is not None
            backends[bid] = None
            self.last_released.append(b)
            del self._backend_ids[_bkey(b)]
            self._free_backend.append(bid)
            phases[6].delete(BACKENDS, family(b.ip), (bid,))
            self.ledger.release((BACKENDS, family(b.ip)))
            self.ledger.release((BACKEND_IDS, 0))

    def recount_tc(self) -> None:
        """After a full sync of the TC-path maps (strays pruned), their use is
        exactly what the frontends need."""
        tables = sum(maglev_tables(fe) for fe in self._kernel.values())
        ranges = {4: 0, 6: 0}
        for fe in self._kernel.values():
            for rfam, _ in source_ranges(fe):
                ranges[rfam] += 1
        self.ledger.set_used((MAGLEV, 0), tables)
        for rfam, n in ranges.items():
            self.ledger.set_used((SRCRANGE, rfam), n)


def _bkey(b: Backend) -> tuple:
    """What backend ids are keyed on: address, port and protocol, as the
    tuple (ip, port, proto, False). A backend on another node (nearly all of
    them in a large cluster) is that tuple itself, so the id table needs no
    second tuple per endpoint (6 MiB at 100k); a local one maps to it."""
    return b if not b.local else (b.ip, b.port, b.proto, False)


def _id_space(in_use: set[int]) -> tuple[int, list[int]]:
    """(next id, free ids below it as a stack) from the ids in use: the gaps
    an earlier agent left are handed out again, lowest first."""
    top = max(in_use, default=0)
    return top + 1, [i for i in range(top, 0, -1) if i not in in_use]
