"""Capacity accounting of the eBPF reconciler: every map entry, slot and id a
Service needs is checked before anything of it is written (all or nothing),
deletion removes everything that was written, errors name the map, pressure
is exactly 1.0 when full, and who wins when capacity runs out is the oldest
Service. The fake maps behave like the kernel's: a new key in a full map
fails the batch, so an accounting error shows up as a failed sync."""

from __future__ import annotations

import random

import pytest

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.capacity import (
    AFFMATCH,
    BACKEND_IDS,
    BACKENDS,
    MAGLEV,
    REV_IDS,
    REVNAT,
    SERVICES,
    SRCRANGE,
)
from pyagent.dataplanes.ebpf.frontends import Backend, Frontend
from pyagent.dataplanes.ebpf.kernel import decode
from pyagent.dataplanes.ebpf.reconciler import Phase, Reconciler, maglev_tables, source_ranges

LB_MAPS = [(m, f) for m in (SERVICES, BACKENDS, REVNAT) for f in (4, 6)] + [(AFFMATCH, 0)]


class MapFull(OSError):
    pass


class KernelLikeMaps:
    """Maps with max_entries: inserting a new key into a full map raises, as
    BPF_MAP_UPDATE_ELEM does (E2BIG). Also tracks the TC-path maps the
    dataplane writes after apply() (Maglev tables, source ranges) from the
    reconciler's frontends, so their accounting can be checked too."""

    def __init__(self, cap: int = 10_000, **caps: int) -> None:
        self.maps: dict[tuple[str, int], dict] = {k: {} for k in LB_MAPS}
        self.cap: dict[tuple[str, int], int] = {k: cap for k in LB_MAPS}
        self.cap.update({(MAGLEV, 0): cap, (SRCRANGE, 4): cap, (SRCRANGE, 6): cap})
        for name, n in caps.items():
            kind, fam = name.rsplit("_", 1)
            self.cap[(kind, int(fam))] = n
        self.fail_after: int | None = None  # operations to run before "SIGKILL"
        self.ops = 0

    def capacity(self):
        return self.cap

    def run(self, phases: list[Phase]) -> None:
        for phase in phases:
            # like KernelWriter: per map, updates then deletes
            for op in [o for o in phase if o.value is not None] + [
                    o for o in phase if o.value is None]:
                if self.fail_after is not None and self.ops >= self.fail_after:
                    raise SystemExit("killed")  # mid-batch, as a SIGKILL can be
                self.ops += 1
                m = self.maps[(op.map, op.family)]
                if op.value is None:
                    m.pop(op.key, None)
                    continue
                if op.key not in m and len(m) >= self.cap[(op.map, op.family)]:
                    raise MapFull(f"{op.map}{op.family} full writing {op.key}")
                m[op.key] = op.value
            self.check()

    def check(self) -> None:
        for fam in (4, 6):
            svcs = self.maps[(SERVICES, fam)]
            for key, val in svcs.items():
                if key[4]:
                    continue
                assert (val[4],) in self.maps[(REVNAT, fam)], f"no rev-NAT for {key}"
                for slot in range(1, val[2] + val[3] + 1):
                    skey = key[:4] + (slot,)
                    assert skey in svcs, f"{key} counts missing slot {slot}"
                    assert (svcs[skey][0],) in self.maps[(BACKENDS, fam)]

    def view(self) -> dict[tuple, list[tuple[str, int]]]:
        out = {}
        for fam in (4, 6):
            svcs = self.maps[(SERVICES, fam)]
            for key, val in svcs.items():
                if key[4] == 0:
                    out[key[:4]] = [self.maps[(BACKENDS, fam)][(svcs[key[:4] + (s,)][0],)][:2]
                                    for s in range(1, val[2] + 1)]
        return out

    def tc_sync(self, r: Reconciler) -> None:
        """What the dataplane writes after apply(): tables and ranges of the
        programmed frontends; checked against their caps."""
        tables = sum(maglev_tables(f) for f in r.frontends())
        assert tables <= self.cap[(MAGLEV, 0)], "lb_maglev over capacity"
        for fam in (4, 6):
            n = sum(1 for f in r.frontends() for rf, _ in source_ranges(f) if rf == fam)
            assert n <= self.cap[(SRCRANGE, fam)], f"lb{fam}_srcrange over capacity"


def be(i: int, port: int = 8080) -> Backend:
    return Backend(f"10.0.{i // 250}.{i % 250 + 1}", port, 6)


def fe(ip: str, port: int, backends: list[Backend], scope: int = L.SCOPE_INTERNAL,
       flags: int = L.ServiceFlag.CLUSTER_IP, algorithm: int = L.Algorithm.RANDOM,
       ranges: tuple[str, ...] = ()) -> Frontend:
    return Frontend(ip, port, 6, scope, int(flags), tuple(backends), 60 if
                    flags & L.ServiceFlag.AFFINITY else 0, algorithm, source_ranges=ranges)


def vip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def snapshot(maps: KernelLikeMaps) -> dict:
    return {k: dict(v) for k, v in maps.maps.items()}


def used_matches_maps(r: Reconciler, maps: KernelLikeMaps) -> None:
    for k in LB_MAPS:
        assert r.used.get(k, 0) == len(maps.maps[k]), k
    revs = {v[4] for fam in (4, 6) for key, v in maps.maps[(SERVICES, fam)].items()
            if key[4] == 0}
    assert r.used.get((REV_IDS, 0), 0) == len(revs)


# -- item 4: a multi-port Service when the rev-NAT id space runs out ----------

def test_rev_nat_ids_run_out_mid_multiport_service_nothing_is_written() -> None:
    """65,535 rev-NAT ids (the default per-CPU arrays they index hold 65,536,
    0 reserved) with a 65,536-entry map: the id space runs out first. A
    two-port Service that needs two ids when one is left is refused whole,
    and deleting it leaves nothing behind."""
    maps = KernelLikeMaps(cap=262144, revnat_4=65536, revnat_6=65536, rev_ids_0=65535)
    r = Reconciler(maps)
    fill = {("fill", f"s{i}"): [fe(vip(i), 80, [be(0)])] for i in range(65534)}
    assert not any(r.apply(fill).values())
    before = snapshot(maps)
    two = [fe("10.255.0.1", 80, [be(1)]), fe("10.255.0.1", 443, [be(2, 8443)])]
    st = r.apply({("ns", "two-ports"): two})[("ns", "two-ports")]
    assert st == "lb4_revnat full: 65534 of 65535 rev-NAT ids in use, this Service needs 2 more"
    assert st.reason == "map_full" and st.map == "lb4_revnat"
    assert snapshot(maps) == before  # not one port written
    assert r.pressure()["lb4_revnat"] < 1.0
    full_state = dict(fill)
    r.apply(full_state, prune_unowned=True)  # the Service was deleted: a full sync
    assert snapshot(maps) == before
    # the last id still goes to a Service that fits
    assert r.apply({("ns", "one"): [fe("10.255.0.2", 80, [be(1)])]}) == {("ns", "one"): None}
    assert r.pressure()["lb4_revnat"] == 1.0 and r.pressure()["lb6_revnat"] == 1.0
    st = r.apply({("ns", "more"): [fe("10.255.0.3", 80, [be(1)])]})[("ns", "more")]
    assert st.startswith("lb4_revnat full: 65535 of 65535 rev-NAT ids in use")
    used_matches_maps(r, maps)


# One case per kind of entry or id a Service needs: the first frontends fit,
# the last one needs the resource that is short.
def _case(kind: str) -> tuple[dict, list[Frontend], str]:
    b = [be(i) for i in range(4)]
    ext, maglev = L.SCOPE_EXTERNAL, L.Algorithm.MAGLEV
    lb = L.ServiceFlag.LOADBALANCER | L.ServiceFlag.SOURCE_RANGE
    return {
        "services": ({"services_4": 5}, [fe("10.96.1.1", 80, b[:2]), fe("10.96.1.1", 81, b[2:])],
                     "lb4_services full"),
        "backends": ({"backends_4": 3}, [fe("10.96.1.1", 80, b[:2]), fe("10.96.1.1", 81, b[2:])],
                     "lb4_backends full"),
        "revnat": ({"revnat_4": 1}, [fe("10.96.1.1", 80, b[:1]), fe("10.96.1.2", 80, b[:1])],
                   "lb4_revnat full"),
        "rev_ids": ({"rev_ids_0": 1}, [fe("10.96.1.1", 80, b[:1]), fe("fd00::1", 80, [])],
                    "lb4_revnat full: 0 of 1 rev-NAT ids"),
        "backend_ids": ({"backend_ids_0": 2}, [fe("10.96.1.1", 80, b[:2]),
                                               fe("10.96.1.1", 81, b[2:3])],
                        "lb4_backends full: 0 of 2 backend ids"),
        "affmatch": ({"affmatch_0": 3}, [fe("10.96.1.1", 80, b[:2], flags=L.ServiceFlag.AFFINITY),
                                         fe("10.96.1.1", 81, b[:2], flags=L.ServiceFlag.AFFINITY)],
                     "lb_aff_match full"),
        "maglev": ({"maglev_0": 1}, [fe("192.0.2.1", 80, b[:2], ext, algorithm=maglev),
                                     fe("192.0.2.1", 81, b[:2], ext, algorithm=maglev)],
                   "lb_maglev full: 0 of 1 tables"),
        "srcrange": ({"srcrange_4": 2},
                     [fe("192.0.2.1", 80, b[:1], ext, lb, ranges=("10.0.0.0/8",)),
                      fe("192.0.2.2", 80, b[:1], ext, lb, ranges=("10.1.0.0/16", "10.2.0.0/16"))],
                     "lb4_srcrange full"),
    }[kind]


@pytest.mark.parametrize("kind", ["services", "backends", "revnat", "rev_ids", "backend_ids",
                                  "affmatch", "maglev", "srcrange"])
def test_every_kind_of_entry_is_checked_before_the_first_write(kind: str) -> None:
    caps, fes, message = _case(kind)
    maps = KernelLikeMaps(**caps)
    r = Reconciler(maps)
    st = r.apply({("ns", "big"): fes})[("ns", "big")]
    assert st is not None and st.startswith(message), st
    assert st.reason == "map_full"
    assert all(not m for m in maps.maps.values())  # nothing of it written
    state = r.state()
    assert not state.frontends and not state.backend_ids and not r.backend_ids_in_use()
    maps.tc_sync(r)
    # its first frontend alone fits, and then that map is exactly full
    assert r.apply({("ns", "big"): fes[:1]}) == {("ns", "big"): None}
    maps.tc_sync(r)
    used_matches_maps(r, maps)
    r.apply({("ns", "big"): []})
    assert all(not m for m in maps.maps.values())


def test_pressure_is_exactly_one_when_full() -> None:
    maps = KernelLikeMaps(services_4=4, backends_4=3)
    r = Reconciler(maps)
    r.apply({("ns", "a"): [fe("10.96.0.1", 80, [be(1), be(2), be(3)])]})
    p = r.pressure()
    assert p["lb4_services"] == 1.0 and p["lb4_backends"] == 1.0
    st = r.apply({("ns", "b"): [fe("10.96.0.2", 80, [])]})[("ns", "b")]
    assert st == "lb4_services full: 4 of 4 entries in use, this Service needs 1 more"


def test_deleting_a_service_removes_every_entry_it_wrote() -> None:
    """Adopted, refused and programmed Services: after their deletion and a
    full sync the maps are empty."""
    maps = KernelLikeMaps(services_4=12)
    r = Reconciler(maps)
    a = [fe("10.96.0.1", 80, [be(1), be(2)]), fe("10.96.0.1", 81, [be(3)])]
    r.apply({("ns", "a"): a})
    r2 = Reconciler(maps, decode(maps.maps))
    b = [fe("10.96.0.2", 80, [be(4), be(5)]), fe("10.96.0.2", 81, [be(i) for i in range(9)])]
    st = r2.apply({("ns", "a"): a, ("ns", "b"): b}, prune_unowned=True)
    assert st[("ns", "a")] is None and st[("ns", "b")].startswith("lb4_services full")
    r2.apply({}, prune_unowned=True)
    assert all(not m for m in maps.maps.values()), maps.maps


@pytest.mark.parametrize("seed", range(40))
def test_random_churn_at_capacity_is_all_or_nothing(seed: int) -> None:
    """Services grow, shrink, move VIPs and go while the maps are nearly
    full: each is either exactly as desired or exactly as before, the maps
    never overflow (the fake fails like the kernel), and the bookkeeping
    counts exactly what the maps hold."""
    rng = random.Random(seed)
    maps = KernelLikeMaps(services_4=40, backends_4=14, revnat_4=7, affmatch_0=10,
                          maglev_0=2, srcrange_4=3, services_6=12, revnat_6=3, backends_6=6)
    r = Reconciler(maps)
    programmed: dict[tuple[str, str], list[Frontend]] = {}
    desired: dict[tuple[str, str], list[Frontend]] = {}
    for _ in range(40):
        changes = {}
        for _ in range(rng.randint(1, 4)):
            svc = ("ns", f"s{rng.randrange(8)}")
            if rng.random() < 0.15:
                changes[svc] = []
                continue
            n = int(svc[1][1:])
            fes = []
            for port in range(rng.randint(1, 3)):
                six = rng.random() < 0.3
                ip = f"fd00::{n + 1}" if six else vip(n + rng.randrange(2) * 20)
                bes = [Backend(f"fd00:1::{i}" if six else f"10.0.0.{i}", 80, 6)
                       for i in rng.sample(range(1, 12), rng.randrange(5))]
                kind = rng.random()
                if kind < 0.2:
                    fes.append(fe(ip, 80 + port, bes, flags=L.ServiceFlag.AFFINITY))
                elif kind < 0.35 and not six:
                    fes.append(fe(ip, 80 + port, bes, L.SCOPE_EXTERNAL,
                                  algorithm=L.Algorithm.MAGLEV))
                elif kind < 0.5 and not six:
                    fes.append(fe(ip, 80 + port, bes, L.SCOPE_EXTERNAL,
                                  L.ServiceFlag.LOADBALANCER | L.ServiceFlag.SOURCE_RANGE,
                                  ranges=tuple(rng.sample(["10.0.0.0/8", "10.1.0.0/16",
                                                           "192.168.0.0/16"], 2))))
                else:
                    fes.append(fe(ip, 80 + port, bes))
            changes[svc] = fes
        desired.update(changes)
        full = rng.random() < 0.3
        if full:  # a full sync names every Service, with its latest desired state
            changes = {svc: fes for svc, fes in desired.items() if fes}
        status = r.apply(changes, prune_unowned=full)
        maps.tc_sync(r)
        for svc, err in status.items():
            if err is None:
                if changes.get(svc):
                    programmed[svc] = changes[svc]
                else:
                    programmed.pop(svc, None)
        want = {f.key: [(b.ip, b.port) for b in f.backends]
                for fes in programmed.values() for f in fes}
        assert maps.view() == want
        for svc, fes in programmed.items():
            assert r.frontends_of(svc) == sorted(fes, key=lambda f: f.key)
        used_matches_maps(r, maps)


def test_oldest_service_wins_and_a_newer_one_never_evicts() -> None:
    """Room for one of two Services: the older gets it whatever the names
    say, and once programmed nothing newer takes its place."""
    created = {("z", "old"): 100.0, ("a", "new"): 200.0}

    def order(svc):
        return (created.get(svc, float("inf")), svc)

    maps = KernelLikeMaps(services_4=2)
    r = Reconciler(maps)
    st = r.apply({("a", "new"): [fe("10.96.0.2", 80, [be(2)])],
                  ("z", "old"): [fe("10.96.0.1", 80, [be(1)])]}, order=order)
    assert st[("z", "old")] is None and st[("a", "new")].startswith("lb4_services full")
    # a full sync in any order keeps the programmed one
    st = r.apply({("a", "new"): [fe("10.96.0.2", 80, [be(2)])],
                  ("z", "old"): [fe("10.96.0.1", 80, [be(1)])]}, prune_unowned=True)
    assert st[("z", "old")] is None and st[("a", "new")] is not None
    # a programmed newer Service is not evicted by an older one arriving later
    maps = KernelLikeMaps(services_4=2)
    r = Reconciler(maps)
    r.apply({("a", "new"): [fe("10.96.0.2", 80, [be(2)])]}, order=order)
    st = r.apply({("z", "old"): [fe("10.96.0.1", 80, [be(1)])],
                  ("a", "new"): [fe("10.96.0.2", 80, [be(2)])]}, order=order)
    assert st[("a", "new")] is None and st[("z", "old")] is not None
    assert list(maps.view()) == [("10.96.0.2", 80, 6, 1)]


def test_room_freed_in_a_sync_is_used_in_the_same_sync() -> None:
    """One Service goes, another needs its room: make-before-break writes
    before it deletes, so the second is planned once the deletes ran."""
    maps = KernelLikeMaps(services_4=2)
    r = Reconciler(maps)
    r.apply({("ns", "a"): [fe("10.96.0.1", 80, [be(1)])]})
    st = r.apply({("ns", "a"): [], ("ns", "b"): [fe("10.96.0.2", 80, [be(2)])]})
    assert st == {("ns", "a"): None, ("ns", "b"): None}
    assert list(maps.view()) == [("10.96.0.2", 80, 6, 1)]


# -- restarts: ids, strays and gaps ------------------------------------------------

def _desired(services: range, shrink: range = range(0)) -> dict:
    return {("ns", f"s{i}"): [fe(vip(i), 80, [be(i + 1)] if i in shrink else [be(i), be(i + 1)]),
                              fe(vip(i), 443, [be(i, 8443)])] for i in services}


FIRST, SECOND = _desired(range(40)), _desired(range(20, 140), shrink=range(20, 30))


def _total_ops() -> int:
    maps = KernelLikeMaps()
    Reconciler(maps).apply(FIRST)
    maps.ops = 0
    Reconciler(maps, decode(maps.maps)).apply(SECOND, prune_unowned=True)
    return maps.ops


@pytest.mark.parametrize("fraction", [0.02, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.98])
def test_agent_killed_mid_first_sync_restart_converges(fraction: float) -> None:
    """SIGKILL anywhere in a large first sync (which adds, changes and
    removes Services): the next agent adopts what is consistent, keeps those
    ids, and converges to exactly the desired maps: nothing lost (no id or
    key handed out while a stray entry of it is still to be deleted) and
    nothing duplicated."""
    maps = KernelLikeMaps()
    Reconciler(maps).apply(FIRST)  # a first agent ran
    maps.ops, maps.fail_after = 0, int(_total_ops() * fraction)
    r = Reconciler(maps, decode(maps.maps))
    with pytest.raises(SystemExit):  # the second agent is killed mid-sync
        r.apply(SECOND, prune_unowned=True)
    maps.fail_after = None
    st = decode(maps.maps)
    kept = {k: rev for k, (_f, rev) in st.frontends.items()}
    kept_backends = dict(st.backend_ids)
    r3 = Reconciler(maps, st)
    assert not any(r3.apply(SECOND, prune_unowned=True).values())
    want = {f.key: [(b.ip, b.port) for b in f.backends]
            for fes in SECOND.values() for f in fes}
    assert maps.view() == want
    assert len(maps.maps[(BACKENDS, 4)]) == len({b for v in want.values() for b in v})
    assert len(maps.maps[(REVNAT, 4)]) == 240  # one per (VIP, port)
    assert len(maps.maps[(SERVICES, 4)]) == sum(1 + len(v) for v in want.values())
    state = r3.state()
    rev_ids = {f.addr: rev for f, rev in state.frontends.values()}
    for key, rev in kept.items():
        if key in want:
            assert rev_ids[key[:3]] == rev
    for bkey, bid in kept_backends.items():
        assert state.backend_ids.get(bkey, bid) == bid
    used_matches_maps(r3, maps)


def test_adopted_id_gaps_are_reused() -> None:
    """A restarted agent hands out the ids its predecessor freed: with ids 1
    and 65535 in use the id space is not exhausted."""
    maps = KernelLikeMaps(cap=200_000)
    r = Reconciler(maps)
    r.apply({("ns", f"s{i}"): [fe(vip(i), 80, [be(0)])] for i in range(65535)})
    r.apply({("ns", f"s{i}"): [] for i in range(1, 65534)})
    r2 = Reconciler(maps, decode(maps.maps))
    assert r2.used[(REV_IDS, 0)] == 2
    st = r2.apply({("ns", "new"): [fe("10.255.0.1", 80, [be(0)])], **{
        ("ns", f"s{i}"): [fe(vip(i), 80, [be(0)])] for i in (0, 65534)}}, prune_unowned=True)
    assert not any(st.values())
    assert {f.addr: rev for f, rev in r2.state().frontends.values()}[("10.255.0.1", 80, 6)] == 2
    assert r2.used[(BACKEND_IDS, 0)] == 1


# -- map sizes: config key, flag, -D defines ------------------------------------------

def test_map_size_config_key_flag_and_defines() -> None:
    import argparse

    from pyagent.cli.run import add_node_flags, node_config
    from pyagent.core.config import config_from_dict
    from pyagent.dataplanes.ebpf.socket_lb import Capacities, defines
    from pyagent.dataplanes.ebpf.tc import TcCapacities

    assert config_from_dict({"pyagent": {"bpfLbMapMax": 1000}}).bpf_lb_map_max == 1000
    for bad in (0, -1, "1000", True, 1 << 30):
        with pytest.raises(ValueError, match="pyagent.bpfLbMapMax"):
            config_from_dict({"pyagent": {"bpfLbMapMax": bad}})
    p = argparse.ArgumentParser()
    add_node_flags(p)
    assert node_config(p.parse_args(["--bpf-lb-map-max", "4096"])).bpf_lb_map_max == 4096
    with pytest.raises(SystemExit):
        p.parse_args(["--bpf-lb-map-max", "0"])
    assert node_config(p.parse_args([])).bpf_lb_map_max is None
    # defaults are the header's (pins of an upgrade stay compatible)
    assert Capacities.for_lb_map_max(None) == Capacities()
    d = defines("/sys/fs/bpf/x", Capacities.for_lb_map_max(1000))
    assert (d["LB_SERVICE_MAP_MAX"], d["LB_BACKEND_MAP_MAX"], d["LB_REVNAT_MAP_MAX"],
            d["LB_STATS_MAP_MAX"]) == (1000, 1000, 1000, 1001)
    # per-CPU arrays indexed by rev-NAT id stay at 65,536 unless asked for
    big = Capacities.for_lb_map_max(1 << 20).defines()
    assert big["LB_REVNAT_MAP_MAX"] == 65536 and big["LB_STATS_MAP_MAX"] == 65536
    wide = Capacities.for_lb_map_max(1 << 21, 1 << 17).defines()
    assert (wide["LB_SERVICE_MAP_MAX"], wide["LB_REVNAT_MAP_MAX"], wide["LB_STATS_MAP_MAX"]) \
        == (1 << 21, 1 << 17, (1 << 17) + 1)
    alone = Capacities.for_lb_map_max(None, 200_000)
    assert (alone.services, alone.revnat, alone.stats) == (Capacities().services, 200_000, 200_001)
    assert config_from_dict({"pyagent": {"bpfLbRevNatMapMax": 131072}}).bpf_lb_rev_nat_map_max \
        == 131072
    with pytest.raises(ValueError, match="pyagent.bpfLbRevNatMapMax"):
        config_from_dict({"pyagent": {"bpfLbRevNatMapMax": "big"}})
    assert node_config(p.parse_args(["--bpf-lb-rev-nat-map-max", "131072"])) \
        .bpf_lb_rev_nat_map_max == 131072
    assert TcCapacities.for_lb_map_max(1000).defines()["LB_SRC_RANGE_MAP_MAX"] == 1000
    assert Capacities.from_defines(Capacities.for_lb_map_max(77).defines()) == \
        Capacities.for_lb_map_max(77)
