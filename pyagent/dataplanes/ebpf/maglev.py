"""Maglev consistent hashing for the TC (north-south) path.

A frontend whose master entry says LB_ALG_MAGLEV picks a new flow's backend
as table[flow hash % M] of its service's lookup table, instead of slot
hash % count. Tables live in the hash-of-maps lb_maglev (rev_nat_id -> an
array map of M backend ids, M = LB_MAGLEV_M, a prime); tc_nat.c falls back
to the slot when a service has no table.

Table generation follows the Maglev paper (Eisenbud et al., NSDI 2016,
section 3.4): each backend, named by a stable string such as "ip:port",
gets offset = h1(name) % M and skip = h2(name) % (M - 1) + 1; backends take
turns claiming the next free entry of their permutation
(offset + j * skip) % M until all M are filled. Shares differ by at most
one entry per round, so every backend gets M/N +- 1 entries, and removing
one of N backends moves little more than the 1/N of entries it owned.
The table depends only on the set of names (backends are ordered by name),
so every node builds the same one.

Kernel sync (sync_tables) builds each changed table in a fresh inner map
and swaps it into lb_maglev with a single map update: a packet sees the
old table or the new one, never a mix. The replaced inner map is freed by
the kernel once no program or fd holds it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebpf import libbpf
from ebpf.maps import Map
from pyagent.dataplanes.ebpf import layout as L

M = L.MAGLEV_M
INNER_NAME = "lb_maglev_tab"  # kernel name of each table (15 chars max)

# Backends of one service: [(backend id, "ip:port"), ...] or {id: "ip:port"}.
Backends = Iterable[tuple[int, str]] | Mapping[int, str]


def _hashes(name: str) -> tuple[int, int]:
    d = hashlib.blake2b(name.encode(), digest_size=16, person=b"pyagent-maglev").digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def permutation(name: str, m: int = M) -> tuple[int, int]:
    """(offset, skip) of a backend's preference list in a table of size m."""
    h1, h2 = _hashes(name)
    return h1 % m, h2 % (m - 1) + 1


def _normalize(backends: Backends) -> list[tuple[int, str]]:
    items = backends.items() if isinstance(backends, Mapping) else backends
    return sorted(((int(i), str(n)) for i, n in items), key=lambda t: (t[1], t[0]))


def build_table(backends: Backends, m: int = M) -> list[int]:
    """The Maglev lookup table: m backend ids (all 0 without backends).
    m must be prime (any skip then visits every entry)."""
    bes = _normalize(backends)
    if not bes:
        return [0] * m
    perms = [permutation(name, m) for _, name in bes]
    nxt = [0] * len(bes)
    table = [-1] * m
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(perms):
            c = (offset + nxt[i] * skip) % m
            while table[c] >= 0:
                nxt[i] += 1
                c = (offset + nxt[i] * skip) % m
            table[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                return [bes[j][0] for j in table]


def shares(table: Sequence[int]) -> dict[int, int]:
    """Entries per backend id."""
    out: dict[int, int] = {}
    for b in table:
        out[b] = out.get(b, 0) + 1
    return out


# ---------------------------------------------------------------- kernel sync


@dataclass
class SyncResult:
    written: int = 0    # tables built and swapped in
    deleted: int = 0    # services whose table went
    unchanged: int = 0  # tables already right


# (outer map id, rev_nat_id) -> (inner map id, table bytes digest): saves
# reading a 64 KiB table back on every sync of an unchanged service.
_known: dict[tuple[int, int], tuple[int, bytes]] = {}


def _tc_maps(maps: Any) -> Any:
    """TcMaps from a TcMaps or a TcLB (.maps)."""
    return maps if hasattr(maps, "lb_maglev") else maps.maps


def _table_bytes(table: Sequence[int]) -> bytes:
    return bytes((ctypes.c_uint32 * len(table))(*table))


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _read_inner(map_id: int, m: int) -> bytes | None:
    """The values of an inner table in index order, None if it is gone."""
    try:
        fd = libbpf.map_fd_by_id(map_id)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    with Map(fd, ctypes.c_uint32, ctypes.c_uint32) as inner:
        if inner.max_entries != m:
            return None
        vals = [b""] * m
        for k, v in inner.items_raw():
            vals[int.from_bytes(k, "little")] = v
        return b"".join(vals)


def _new_inner(data: bytes, m: int) -> int:
    """A fresh, filled inner table; returns its fd (caller closes)."""
    fd = libbpf.map_create(L.MAP_TYPE_ARRAY, INNER_NAME, 4, 4, m)
    try:
        with Map(os.dup(fd), ctypes.c_uint32, ctypes.c_uint32) as inner:
            inner.update_many_raw(_table_bytes(range(m)), data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def current_table_id(maps: Any, rev_nat_id: int) -> int | None:
    """The map id of a service's inner table in lb_maglev, or None."""
    v = _tc_maps(maps).lb_maglev.get(ctypes.c_uint32(rev_nat_id))
    return None if v is None else int(v.value)




def sync_tables(maps: Any, desired: Mapping[int, Backends], prune: bool = False) -> SyncResult:
    """Make lb_maglev hold, for every service id in desired, the Maglev
    table of its backends ((id, "ip:port") pairs or {id: "ip:port"}, any
    order; ids are what the table holds, names decide the placement). A
    service with no backends loses its table (the program then uses the
    slots); with prune, so does every id not in desired (full sync).

    A changed table is built in a fresh inner map and swapped in with one
    update of lb_maglev, so readers switch atomically; an unchanged one is
    left alone (idempotent: a second call writes nothing). maps is TcMaps
    or a TcLB. Call it after the backends and slots of the service are
    written and before stale backends are deleted."""
    tm = _tc_maps(maps)
    outer: Map = tm.lb_maglev
    m = tm.lb_maglev_inner.max_entries
    outer_id = outer.info.id
    res = SyncResult()
    for rev_nat_id, backends in desired.items():
        key = ctypes.c_uint32(rev_nat_id)
        bes = _normalize(backends)
        if not bes:
            if outer.delete(key):
                res.deleted += 1
            _known.pop((outer_id, rev_nat_id), None)
            continue
        data = _table_bytes(build_table(bes, m))
        digest = _digest(data)
        cur = outer.get(key)
        if cur is not None:
            cur_id = int(cur.value)
            if _known.get((outer_id, rev_nat_id)) == (cur_id, digest) or \
                    _read_inner(cur_id, m) == data:
                _known[(outer_id, rev_nat_id)] = (cur_id, digest)
                res.unchanged += 1
                continue
        fd = _new_inner(data, m)
        try:
            new_id = libbpf.map_info(fd).id
            outer.set(key, ctypes.c_uint32(fd))  # the swap: one update
        finally:
            os.close(fd)  # lb_maglev holds the table now
        _known[(outer_id, rev_nat_id)] = (new_id, digest)
        res.written += 1
    if prune:
        stale = [k for k in list(outer.keys()) if k.value not in desired]
        for k in stale:
            if outer.delete(k):
                res.deleted += 1
            _known.pop((outer_id, k.value), None)
    return res


def delete_table(maps: Any, rev_nat_id: int) -> bool:
    """Drop a service's table (it falls back to the slots)."""
    return sync_tables(maps, {rev_nat_id: ()}).deleted == 1
