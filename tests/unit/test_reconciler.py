"""The reconciler against an in-memory map writer that checks, after every
phase, what a BPF lookup could see: no master counting a missing slot, no
slot naming a missing backend, no master without its rev-NAT entry."""

from __future__ import annotations

import random

import pytest

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.frontends import Backend, Frontend
from pyagent.dataplanes.ebpf.reconciler import (
    AFFMATCH,
    BACKENDS,
    REVNAT,
    SERVICES,
    Phase,
    Reconciler,
)


class FakeMaps:
    def __init__(self, capacity: int = 10_000) -> None:
        self.maps: dict[tuple[str, int], dict] = {
            (m, f): {} for m in (SERVICES, BACKENDS, REVNAT) for f in (4, 6)}
        self.maps[(AFFMATCH, 0)] = {}
        self.cap = {k: capacity for k in self.maps}
        self.ops = 0
        self.phases: list[Phase] = []

    def capacity(self):
        return self.cap

    def run(self, phases: list[Phase]) -> None:
        self.phases = phases
        for phase in phases:
            for op in phase:
                m = self.maps[(op.map, op.family)]
                if op.value is None:
                    m.pop(op.key, None)
                else:
                    m[op.key] = op.value
                self.ops += 1
            self.check()

    def check(self) -> None:
        for fam in (4, 6):
            svcs = self.maps[(SERVICES, fam)]
            for key, val in svcs.items():
                if key[4] != 0:
                    continue
                count, rev_id = val[2] + val[3], val[4]  # active + terminating slots
                assert (rev_id,) in self.maps[(REVNAT, fam)], f"no rev-NAT for {key}"
                for slot in range(1, count + 1):
                    skey = key[:4] + (slot,)
                    assert skey in svcs, f"{key} counts missing slot {slot}"
                    bid = svcs[skey][0]
                    assert (bid,) in self.maps[(BACKENDS, fam)], f"slot {skey} -> missing {bid}"

    def view(self) -> dict[tuple, list[tuple[str, int]]]:
        """VIP key -> backends as a lookup would resolve them."""
        out = {}
        for fam in (4, 6):
            svcs = self.maps[(SERVICES, fam)]
            for key, val in svcs.items():
                if key[4] == 0:
                    bes = []
                    for slot in range(1, val[2] + 1):
                        b = self.maps[(BACKENDS, fam)][(svcs[key[:4] + (slot,)][0],)]
                        bes.append((b[0], b[1]))
                    out[key[:4]] = bes
        return out


def fe(ip: str, port: int, *backends: str, scope: int = L.SCOPE_INTERNAL) -> Frontend:
    return Frontend(ip, port, 6, scope, L.ServiceFlag.CLUSTER_IP,
                    tuple(Backend(b, 8080, 6) for b in backends))


def test_add_change_remove_keeps_invariants_and_minimal_ops() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    assert r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1", "10.0.0.2")]}) == {
        ("ns", "a"): None}
    assert maps.view() == {("10.96.0.1", 80, 6, 1): [("10.0.0.1", 8080), ("10.0.0.2", 8080)]}
    maps.ops = 0
    r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1", "10.0.0.2", "10.0.0.3")]})
    # one backend, one slot, one master: nothing rewritten that did not change
    assert maps.ops == 3
    r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1")]})
    assert maps.view() == {("10.96.0.1", 80, 6, 1): [("10.0.0.1", 8080)]}
    assert len(maps.maps[(BACKENDS, 4)]) == 1
    r.apply({("ns", "a"): []})
    assert all(not m for m in maps.maps.values())


def test_unchanged_service_writes_nothing() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    svc = {("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1"), fe("fd00::1", 80, "fd00:1::1")]}
    r.apply(svc)
    maps.ops = 0
    r.apply(svc)
    assert maps.ops == 0


def test_shared_backends_are_refcounted() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1")],
             ("ns", "b"): [fe("10.96.0.2", 80, "10.0.0.1")]})
    assert len(maps.maps[(BACKENDS, 4)]) == 1
    r.apply({("ns", "a"): []})
    assert maps.view() == {("10.96.0.2", 80, 6, 1): [("10.0.0.1", 8080)]}
    r.apply({("ns", "b"): []})
    assert not maps.maps[(BACKENDS, 4)]


def test_frontend_conflict_refuses_second_service_only() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    st = r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1")],
                  ("ns", "b"): [fe("10.96.0.1", 80, "10.0.0.2")]})
    assert st[("ns", "a")] is None
    assert "already used by ns/a" in (st[("ns", "b")] or "")
    assert maps.view() == {("10.96.0.1", 80, 6, 1): [("10.0.0.1", 8080)]}


def test_full_map_refuses_service_and_keeps_last_good_state() -> None:
    maps = FakeMaps(capacity=8)
    r = Reconciler(maps)
    assert r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1")]})[("ns", "a")] is None
    big = [f"10.0.1.{i}" for i in range(20)]
    st = r.apply({("ns", "a"): [fe("10.96.0.1", 80, *big)],
                  ("ns", "b"): [fe("10.96.0.2", 80, "10.0.0.9")]})
    assert "full" in (st[("ns", "a")] or "")
    assert st[("ns", "b")] is None
    view = maps.view()
    assert view[("10.96.0.1", 80, 6, 1)] == [("10.0.0.1", 8080)]
    assert view[("10.96.0.2", 80, 6, 1)] == [("10.0.0.9", 8080)]


def rev_ids(r: Reconciler) -> dict[tuple[str, int, int], int | None]:
    return {f.addr: r.rev_id(f) for f in r.frontends()}


def test_rev_ids_are_stable_and_not_reused_within_a_sync() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    r.apply({("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1")]})
    first = rev_ids(r)[("10.96.0.1", 80, 6)]
    # remove a and add c in one sync: c must not get a's id (phase 5 deletes it)
    r.apply({("ns", "a"): [], ("ns", "c"): [fe("10.96.0.3", 80, "10.0.0.1")]})
    assert rev_ids(r)[("10.96.0.3", 80, 6)] != first
    maps.check()


def test_adopt_then_identical_desired_state_writes_nothing() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    wanted = {("ns", "a"): [fe("10.96.0.1", 80, "10.0.0.1", "10.0.0.2")],
              ("ns", "b"): [fe("fd00::2", 53, "fd00:1::1")]}
    r.apply(wanted)
    adopted = r.state()
    maps.ops = 0
    r2 = Reconciler(maps, adopted)
    r2.apply(wanted, prune_unowned=True)
    assert maps.ops == 0
    assert rev_ids(r2) == rev_ids(r) and r2.state().backend_ids == r.state().backend_ids
    # an adopted frontend nobody claims goes at the first full sync
    r2.apply({("ns", "a"): wanted[("ns", "a")]}, prune_unowned=True)
    r3 = Reconciler(maps, r2.state())
    r3.apply({}, prune_unowned=True)
    assert all(not m for m in maps.maps.values())


@pytest.mark.parametrize("seed", range(20))
def test_random_churn_matches_desired(seed: int) -> None:
    rng = random.Random(seed)
    maps = FakeMaps()
    r = Reconciler(maps)
    desired: dict[tuple[str, str], list[Frontend]] = {}
    pool = [f"10.0.{i // 250}.{i % 250}" for i in range(60)]
    for _ in range(30):
        changes = {}
        for _ in range(rng.randint(1, 4)):
            svc = ("ns", f"s{rng.randrange(8)}")
            n = rng.randrange(5)
            vip = f"10.96.0.{int(svc[1][1:]) + 1}"
            changes[svc] = [fe(vip, 80, *rng.sample(pool, n))] if rng.random() > 0.2 else []
        r.apply(changes)
        desired.update(changes)
        want = {f.key: [(b.ip, b.port) for b in f.backends]
                for fes in desired.values() for f in fes}
        assert maps.view() == want
        used = {b.key for fes in desired.values() for f in fes for b in f.backends}
        assert len(maps.maps[(BACKENDS, 4)]) == len(used)


def test_affinity_membership_follows_the_backends() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)

    def aff(*backends: str, on: bool = True) -> Frontend:
        f = fe("10.96.0.1", 80, *backends)
        flags = f.flags | (L.ServiceFlag.AFFINITY if on else 0)
        return Frontend(f.ip, f.port, f.proto, f.scope, int(flags), f.backends, 60)

    def members() -> set[str]:
        by_id = {k[0]: v[0] for k, v in maps.maps[(BACKENDS, 4)].items()}
        return {by_id[k[0]] for k in maps.maps[(AFFMATCH, 0)]}

    r.apply({("ns", "a"): [aff("10.0.0.1", "10.0.0.2")]})
    assert members() == {"10.0.0.1", "10.0.0.2"}
    r.apply({("ns", "a"): [aff("10.0.0.2", "10.0.0.3")]})
    assert members() == {"10.0.0.2", "10.0.0.3"}  # the one that left is no member
    r.apply({("ns", "a"): [aff("10.0.0.2", "10.0.0.3", on=False)]})
    assert members() == set()
    r.apply({("ns", "a"): [aff("10.0.0.2")]})
    r.apply({("ns", "a"): []})
    assert all(not m for m in maps.maps.values())


def test_terminating_backends_drain_in_slots_after_the_active_ones() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    f = fe("10.96.0.1", 80, "10.0.0.1", "10.0.0.2", "10.0.0.3")
    r.apply({("ns", "a"): [f]})
    draining = Frontend(f.ip, f.port, f.proto, f.scope, f.flags, f.backends[::2],
                        terminating=f.backends[1:2])
    r.apply({("ns", "a"): [draining]})
    master = maps.maps[(SERVICES, 4)][("10.96.0.1", 80, 6, 1, 0)]
    assert (master[2], master[3]) == (2, 1)  # count, qcount
    assert len(maps.maps[(BACKENDS, 4)]) == 3  # the draining backend stays known
    r.apply({("ns", "a"): [Frontend(f.ip, f.port, f.proto, f.scope, f.flags, f.backends[::2])]})
    assert len(maps.maps[(BACKENDS, 4)]) == 2  # gone once it stops serving


class TcMaps(FakeMaps):
    """A writer that also holds the TC path's maps: source ranges and Maglev
    tables by service id, as write_tc leaves them."""

    has_tc = True

    def __init__(self) -> None:
        super().__init__()
        from pyagent.dataplanes.ebpf.capacity import MAGLEV, SRCRANGE

        for res in ((MAGLEV, 0), (SRCRANGE, 4), (SRCRANGE, 6)):
            self.cap[res] = 10_000
        self.ranges: dict[int, tuple[str, ...]] = {}
        self.tables: dict[int, list] = {}
        self.calls = 0

    def write_tc(self, ranges, tables, prune) -> None:
        self.calls += 1
        if prune:
            self.ranges = {k: v for k, v in self.ranges.items() if k in ranges}
            self.tables = {k: v for k, v in self.tables.items() if k in tables}
        for rev_id, cidrs in ranges.items():
            self.ranges[rev_id] = cidrs
        for rev_id, table in tables.items():
            self.tables[rev_id] = table
        self.ranges = {k: v for k, v in self.ranges.items() if v}
        self.tables = {k: v for k, v in self.tables.items() if v}


def test_the_reconciler_writes_source_ranges_and_maglev_tables_itself() -> None:
    """One writer for every map family: the TC path's source ranges and
    Maglev tables follow the frontends in the same apply, by service id."""
    import dataclasses

    maps = TcMaps()
    r = Reconciler(maps)
    lb = dataclasses.replace(fe("203.0.113.1", 443, "10.0.0.1", "10.0.0.2",
                                scope=L.SCOPE_EXTERNAL),
                             algorithm=L.Algorithm.MAGLEV, source_ranges=("192.0.2.0/24",))
    assert r.apply({("ns", "lb"): [lb]}) == {("ns", "lb"): None}
    rev = r.rev_id(lb)
    assert maps.ranges == {rev: ("192.0.2.0/24",)}
    assert sorted(maps.tables[rev]) == sorted(
        (r.backend_id(b), f"{b.ip}:8080") for b in lb.backends)
    assert r.last_frontend_status == {lb.key: None}
    assert r.frontends() == [lb]
    r.apply({("ns", "lb"): []})  # the Service goes: its ranges and table go too
    assert maps.ranges == {} and maps.tables == {}


def test_a_refused_service_is_reported_per_frontend() -> None:
    maps = FakeMaps()
    r = Reconciler(maps)
    a, b = fe("10.96.0.1", 80, "10.0.0.1"), fe("10.96.0.1", 80, "10.0.0.2")
    c = fe("10.96.0.2", 80, "10.0.0.3")
    status = r.apply({("ns", "a"): [a], ("ns", "b"): [b, c]})  # b wants a's frontend too
    assert status[("ns", "a")] is None and "already used by ns/a" in status[("ns", "b")]
    assert r.last_frontend_status == {a.key: None, c.key: status[("ns", "b")]}


def test_a_large_sync_in_batches_keeps_every_lookup_whole(monkeypatch) -> None:
    from pyagent.dataplanes.ebpf import reconciler

    def services(n: int, shift: int) -> dict:
        def backend(k: int) -> str:
            return f"10.1.{k // 200}.{k % 200 + 1}"
        # backends shared between neighbours; a shift moves them all
        return {("ns", f"s{i:04}"): [fe(f"10.96.{i // 250}.{i % 250 + 1}", 80,
                                        *(backend(i + j + shift) for j in range(3)))]
                for i in range(n)}

    batched, whole = FakeMaps(), FakeMaps()
    runs = []
    run = batched.run
    monkeypatch.setattr(batched, "run", lambda phases: (runs.append(1), run(phases)))
    rb, rw = Reconciler(batched), Reconciler(whole)
    for step, (n, shift) in enumerate([(600, 0), (600, 7), (300, 3)]):
        want = services(n, shift)
        runs.clear()
        monkeypatch.setattr(reconciler, "FLUSH_OPS", 50)
        rb.apply(want, prune_unowned=True)
        monkeypatch.setattr(reconciler, "FLUSH_OPS", 10**9)
        rw.apply(want, prune_unowned=True)
        assert len(runs) > 1, "not batched"
        # FakeMaps.check ran after every phase of every batch
        assert batched.maps == whole.maps, f"step {step}"
        assert rb.last_ops == rw.last_ops
