"""Maglev consistent hashing on the TC path (bpf_src/tc_nat.c, lb_maglev)
through BPF_PROG_TEST_RUN with private (unpinned) maps: tables synced by
pyagent/dataplanes/ebpf/maglev.py, flows run through lb_netdev_ingress."""

from __future__ import annotations

import ctypes
import itertools
import os

import bpfmaps
import pytest

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import maglev as mg
from pyagent.dataplanes.ebpf import packet as P

pytestmark = pytest.mark.root

NODE4, NODE6 = "192.168.50.10", "fd00:50::10"
CLIENT4, CLIENT6 = "203.0.113.2", "2001:db8::2"
F = L.ServiceFlag
OK = 0
N = 10
FLOWS = range(20000, 22000)  # client ports: 2,000 distinct flows

_ids = itertools.count(1)
_ports = itertools.count(31000)


@pytest.fixture(scope="module")
def lb():
    from pyagent.dataplanes.ebpf import socket_lb, tc

    caps = socket_lb.Capacities(1024, 1024, 1024, 64, 256, 4096)
    with tc.load(None, caps, tc.TcCapacities(ct=16384, src_range=64, maglev=64)) as lb:
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6)
        yield lb


class Frontend:
    """A NodePort frontend written the way the control plane does: backends,
    slots, master entry; set() rewrites it for a new backend list."""

    def __init__(self, lb, vip: str, port: int, proto: str = "TCP",
                 algorithm: int = L.Algorithm.MAGLEV, flags: int = F.NODE_PORT):
        self.lb, self.vip, self.port, self.proto = lb, vip, port, proto
        self.algorithm, self.flags = algorithm, flags
        self.rev = next(_ids)
        self.v6 = ":" in vip
        self.slots = 0
        self.ids: dict[str, int] = {}  # backend address -> id

    @property
    def bmap(self):
        return self.lb.lb_maps.lb6_backends if self.v6 else self.lb.lb_maps.lb4_backends

    @property
    def smap(self):
        return self.lb.lb_maps.lb6_services if self.v6 else self.lb.lb_maps.lb4_services

    def key(self, slot: int = 0):
        return L.service_key(self.vip, self.port, self.proto, slot=slot, scope=L.SCOPE_EXTERNAL)

    def set(self, addrs: list[str], bport: int = 8080, sync: bool = True) -> None:
        for a in addrs:
            if a not in self.ids:
                self.ids[a] = next(_ids)
                self.bmap.set(ctypes.c_uint32(self.ids[a]), L.backend_value(
                    a, bport, self.proto, flags=L.BACKEND_F_LOCAL))
        for slot, a in enumerate(addrs, 1):
            self.smap.set(self.key(slot), L.LbService(backend_id=self.ids[a]))
        self.smap.set(self.key(), L.LbService(count=len(addrs), rev_nat_id=self.rev,
                                              flags=self.flags, algorithm=self.algorithm))
        for slot in range(len(addrs) + 1, self.slots + 1):
            self.smap.delete(self.key(slot))
        self.slots = len(addrs)
        if sync:
            mg.sync_tables(self.lb, {self.rev: self.table_input(addrs, bport)})
        for a in [a for a in self.ids if a not in addrs]:  # backends go last
            self.bmap.delete(ctypes.c_uint32(self.ids.pop(a)))

    def table_input(self, addrs: list[str], bport: int = 8080) -> list[tuple[int, str]]:
        return [(self.ids[a], P.hostport(a, bport)) for a in addrs]


def choices(lb, fe: Frontend, client: str, flows=FLOWS) -> dict[int, str]:
    """client port -> backend address, each flow a fresh SYN; conntrack is
    flushed first so no earlier entry pins a flow."""
    from pyagent.dataplanes.ebpf import tc

    bpfmaps.flush_conntrack(lb.maps)
    out = {}
    for cport in flows:
        ret, frame = tc.test_packet(lb.prog_fds[tc.PROG_NETDEV_INGRESS],
                                    P.build(client, fe.vip, fe.proto, cport, fe.port))
        assert ret == OK
        p = P.parse(frame)
        assert p.errors == [], p.describe()
        out[cport] = p.dst
    return out


def tables(lb) -> list[ctypes.c_uint32]:
    """The service ids with a table in lb_maglev."""
    return list(lb.maps.lb_maglev.keys())


def addrs4(n: int, base: int = 10) -> list[str]:
    return [f"10.244.0.{base + i}" for i in range(n)]


# ---------------------------------------------------------------------------


def test_removing_one_of_n_backends_moves_about_one_nth_of_flows(lb):
    fe = Frontend(lb, NODE4, next(_ports))
    bes = addrs4(N)
    fe.set(bes)
    before = choices(lb, fe, CLIENT4)
    per = {b: sum(1 for v in before.values() if v == b) for b in bes}
    assert min(per.values()) > len(FLOWS) / N / 2, per  # every backend serves

    gone = bes[3]
    fe.set([b for b in bes if b != gone])
    after = choices(lb, fe, CLIENT4)

    moved = [c for c in FLOWS if before[c] != after[c]]
    frac = len(moved) / len(FLOWS)
    print(f"maglev: {frac:.4f} of {len(FLOWS)} flows moved removing 1 of {N} backends")
    assert 0.5 / N <= frac <= 2 / N, frac
    assert gone not in after.values()
    assert all(after[c] != gone for c in FLOWS if before[c] == gone)  # all of them moved
    # and the moved flows are (nearly) only the removed backend's
    assert sum(1 for c in moved if before[c] != gone) <= 0.05 * len(FLOWS)


def test_hash_mod_count_would_move_most_flows(lb):
    """The baseline Maglev improves on: the same change with RANDOM."""
    fe = Frontend(lb, NODE4, next(_ports), algorithm=L.Algorithm.RANDOM)
    bes = addrs4(N, base=60)
    fe.set(bes, sync=False)
    flows = range(20000, 20500)
    before = choices(lb, fe, CLIENT4, flows)
    fe.set([b for b in bes if b != bes[3]], sync=False)
    after = choices(lb, fe, CLIENT4, flows)
    assert sum(before[c] != after[c] for c in flows) / len(flows) > 0.5


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_the_table_decides_not_the_slots(lb, v6):
    vip, client = (NODE6, CLIENT6) if v6 else (NODE4, CLIENT4)
    bes = [f"fd00:244::{i:x}" for i in range(0x20, 0x23)] if v6 else addrs4(3, base=120)
    fe = Frontend(lb, vip, next(_ports))
    fe.set(bes)
    flows = range(23000, 23100)
    assert set(choices(lb, fe, client, flows).values()) == set(bes)
    # A table of one backend while the slots still hold three: the table wins.
    mg.sync_tables(lb, {fe.rev: fe.table_input(bes[1:2])})
    assert set(choices(lb, fe, client, flows).values()) == {bes[1]}
    # No table: hash % count over the slots again.
    assert mg.delete_table(lb, fe.rev)
    assert mg.current_table_id(lb, fe.rev) is None
    assert set(choices(lb, fe, client, flows).values()) == set(bes)


def test_table_naming_a_deleted_backend_falls_back_to_the_slots(lb):
    fe = Frontend(lb, NODE4, next(_ports))
    bes = addrs4(3, base=140)
    fe.set(bes)
    stale = fe.ids[bes[0]]
    # The table still names bes[0], which is deleted before the table syncs.
    fe.set(bes[1:], sync=False)
    assert stale in set(bpfmaps.read_table(lb, fe.rev))
    got = choices(lb, fe, CLIENT4, range(24000, 24200))
    assert set(got.values()) == set(bes[1:])


def test_the_swap_is_one_map_update_and_the_old_table_stays_intact(lb):
    from ebpf import libbpf

    fe = Frontend(lb, NODE4, next(_ports))
    bes = addrs4(N, base=160)
    fe.set(bes)
    old_id = mg.current_table_id(lb, fe.rev)
    old_table = bpfmaps.read_table(lb, fe.rev)
    assert old_table == mg.build_table(fe.table_input(bes))
    old_fd = libbpf.map_fd_by_id(old_id)  # a reader holding the old table
    try:
        writes = []
        outer = lb.maps.lb_maglev
        real_set = outer.set
        outer.set = lambda k, v, *a: (writes.append((k.value, v.value)), real_set(k, v, *a))
        try:
            new = bes[:-1] + ["10.244.0.250"]
            fe.set(new)
        finally:
            del outer.set
        assert len(writes) == 1 and writes[0][0] == fe.rev  # one update of lb_maglev
        new_id = mg.current_table_id(lb, fe.rev)
        assert new_id != old_id  # a fresh inner map, not an in-place rewrite
        assert bpfmaps.read_table(lb, fe.rev) == mg.build_table(fe.table_input(new))
        # The old inner map was never written: readers that still hold it
        # see a complete old table.
        from ebpf.maps import Map

        with Map(os.dup(old_fd), ctypes.c_uint32, ctypes.c_uint32) as m:
            assert [m.get(ctypes.c_uint32(i)).value for i in range(0, mg.M, 97)] == \
                old_table[::97]
    finally:
        os.close(old_fd)

    # Idempotent: the same backends again write nothing.
    res = mg.sync_tables(lb, {fe.rev: fe.table_input(new)})
    assert (res.written, res.unchanged) == (0, 1)
    assert mg.current_table_id(lb, fe.rev) == new_id


def test_sync_reads_back_unknown_tables_and_prunes(lb):
    fe = Frontend(lb, NODE4, next(_ports))
    bes = addrs4(4, base=200)
    fe.set(bes)
    mg._known.clear()  # as after an agent restart: the table is read back
    res = mg.sync_tables(lb, {fe.rev: fe.table_input(bes)})
    assert (res.written, res.unchanged) == (0, 1)
    others = [k.value for k in tables(lb) if k.value != fe.rev]
    res = mg.sync_tables(lb, {fe.rev: fe.table_input(bes)}, prune=True)
    assert (res.deleted, res.unchanged) == (len(others), 1)
    assert [k.value for k in tables(lb)] == [fe.rev]
