"""The maps-first start (parallel_load): map_pins pins every map the
socket LB and the TC programs use, with the layout's types and sizes, so the
two loads that then run at once create no map of their own (the same map
ids before and after) and each finds every map it needs; the eBPF dataplane
fills those maps while the programs still load and attaches them only
then. And a TC load without XDP (or without pod interfaces) compiles no
lb_xdp_ingress (lb_pod_ingress)."""

from __future__ import annotations

import os
import threading

import pytest

from ebpf import libbpf
from pyagent.dataplanes.ebpf import layout, parallel_load, socket_lb, tc

pytestmark = pytest.mark.root

CAPS = socket_lb.Capacities(256, 256, 256, 256, 256, 256)
TC_CAPS = tc.TcCapacities(ct=512, src_range=64, maglev=16)


def map_ids(bpffs: str) -> dict[str, int]:
    out = {}
    for spec in (*layout.MAPS.values(), *layout.TC_MAPS.values()):
        fd = libbpf.obj_get(spec.pin_path(bpffs))
        try:
            out[spec.name] = libbpf.map_info(fd).id
        finally:
            os.close(fd)
    return out


def test_maps_first_then_both_loads_at_once(bpffs: str) -> None:
    assert not tc.pins_ready(bpffs, CAPS, TC_CAPS)
    tc.pin_maps(bpffs, CAPS, TC_CAPS)
    assert tc.pins_ready(bpffs, CAPS, TC_CAPS)  # every pin, types and sizes as configured
    before = map_ids(bpffs)
    loads = parallel_load.start(bpffs, CAPS, TC_CAPS, xdp=True)
    assert loads.pinned
    names = {t.name for t in threading.enumerate()}
    assert {"tc-load", "sock-lb-load"} <= names  # not waiting for us
    lb = loads.socket_lb()
    tc_lb = loads.tc()
    try:
        assert map_ids(bpffs) == before  # neither load made a map of its own
        assert set(tc_lb.prog_fds) == {*tc.PROGRAMS, tc.PROG_XDP}
        assert set(lb.prog_fds) == {h.func for h in lb.variant.hooks}
    finally:
        tc_lb.close()
        lb.close()
    # another size is another map: not ready, and pin_maps replaces it
    bigger = tc.TcCapacities(ct=1024, src_range=64, maglev=16)
    assert not tc.pins_ready(bpffs, CAPS, bigger)
    tc.pin_maps(bpffs, CAPS, bigger)
    assert tc.pins_ready(bpffs, CAPS, bigger)
    after = map_ids(bpffs)
    assert after["lb4_ct"] != before["lb4_ct"] and after["lb4_services"] == before["lb4_services"]


def test_a_node_without_tc_pins_only_the_socket_lb_maps(bpffs: str) -> None:
    tc.pin_maps(bpffs, CAPS, tc_maps=False)
    assert tc.pins_ready(bpffs, CAPS, tc_maps=False)
    assert not any(os.path.exists(s.pin_path(bpffs)) for s in layout.TC_MAPS.values())
    assert not tc.pins_ready(bpffs, CAPS)  # the TC maps would be missing


def test_unused_programs_are_left_out_of_the_compile() -> None:
    from ebpf import compiler

    with tc.load(None, CAPS, TC_CAPS, xdp=False) as lb:
        assert set(lb.prog_fds) == set(tc.PROGRAMS)
        with pytest.raises(Exception, match="lb_xdp_ingress"):
            compiler.load_prog(lb.bpf, tc.PROG_XDP, compiler.PROG_TYPE_XDP)
    with tc.load(None, CAPS, TC_CAPS, xdp=True, pods=False) as lb:
        assert set(lb.prog_fds) == {tc.PROG_NETDEV_INGRESS, tc.PROG_EGRESS, tc.PROG_XDP}
        with pytest.raises(Exception, match="lb_pod_ingress"):
            compiler.load_prog(lb.bpf, tc.PROG_POD_INGRESS, compiler.PROG_TYPE_SCHED_CLS)


def web_store(lab, config):  # type: ignore[no-untyped-def]
    """One Service, 10.96.7.7:80, served by lab pod 1."""
    from pyagent.core.store import ServiceStore
    from tests.agentlab import service, slice_

    store = ServiceStore(config)
    store.replace("Service", [service("web", ["10.96.7.7"], [("http", "TCP", 80)])])
    store.replace("EndpointSlice", [slice_("web", "web-1", 4, [("http", "TCP", 8080)],
                                           [(lab.pods[1].ip4, True)])])
    store.replace("Node", [])
    return store


def lab_config(lab, name: str):  # type: ignore[no-untyped-def]
    from pyagent.core.config import NodeConfig

    return NodeConfig(node_name="node-1", node_ips=("10.244.0.1",),
                      bpffs=str(lab.bpffs / name), cgroup=str(lab.cgroup))


def test_the_maps_fill_while_the_socket_lb_loads(lab, monkeypatch) -> None:
    """setup() returns with the load still running; the first full sync
    writes the maps before the programs are attached, then attaches them
    once loaded: the VIP answers, from the backend."""
    from pyagent.dataplanes.ebpf.dataplane import EbpfDataplane
    from tests.bench.bench_ebpf import states

    gate = threading.Event()
    real = socket_lb.load_out_of_process

    def held(*args, **kw):  # type: ignore[no-untyped-def]
        assert gate.wait(120)
        return real(*args, **kw)
    monkeypatch.setattr(socket_lb, "load_out_of_process", held)
    config = lab_config(lab, "staged")
    store = web_store(lab, config)
    pod = lab.pods[1]
    dp = EbpfDataplane(config)
    try:
        dp.setup()
        assert dp.lb is None and dp.maps is not None  # the load is held: not waited for
        done: list[object] = []
        syncing = threading.Thread(target=lambda: done.append(dp.sync(states(store), True)))
        syncing.start()
        for _ in range(500):
            if list(dp.maps.lb4_services.keys()):
                break
            threading.Event().wait(0.01)
        assert list(dp.maps.lb4_services.keys()), "the sync did not fill the maps"
        assert not any(socket_lb.attached_programs(str(lab.cgroup)).values())
        assert not done  # the sync waits for the programs
        gate.set()
        syncing.join(120)
        assert done == [{("default", "web"): None}]
        assert all(socket_lb.attached_programs(str(lab.cgroup)).values())
        res = lab.client("10.96.7.7", 80, count=5)
        assert res.counts == {pod.name: 5}
    finally:
        gate.set()
        dp.cleanup()


def test_a_failed_pinning_still_starts_one_load_after_the_other(lab, monkeypatch) -> None:
    """pin_maps failing (e.g. a map the kernel refused) is not fatal: the socket LB's
    load makes the maps, setup() opens them after it, and the VIP answers."""
    from pyagent.dataplanes.ebpf.dataplane import EbpfDataplane
    from tests.bench.bench_ebpf import states

    def refused(*_a, **_kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("loading the pinned maps failed: clang says no")
    monkeypatch.setattr(tc, "pin_maps", refused)
    config = lab_config(lab, "serial")
    store = web_store(lab, config)
    dp = EbpfDataplane(config)
    try:
        dp.setup()
        assert dp.loads is not None and not dp.loads.pinned
        assert dp.sync(states(store), True) == {("default", "web"): None}
        dp.wait_loaded()
        res = lab.client("10.96.7.7", 80, count=5)
        assert res.counts == {lab.pods[1].name: 5}
    finally:
        dp.cleanup()
