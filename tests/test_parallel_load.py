"""The maps-first start (parallel_load): bpf_src/maps.c pins every map the
socket LB and the TC programs use, with the layout's types and sizes, so the
two loads that then run at once create no map of their own (the same map
ids before and after) and each finds every map it needs. And a TC load
without XDP compiles no lb_xdp_ingress (a fifth of its compile time)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator

import pytest

from ebpf import bpffs as fs
from ebpf import libbpf
from pyagent.dataplanes.ebpf import layout, parallel_load, socket_lb, tc

pytestmark = pytest.mark.root

CAPS = socket_lb.Capacities(256, 256, 256, 256, 256, 256)
TC_CAPS = tc.TcCapacities(ct=512, src_range=64, maglev=16)


@pytest.fixture
def bpffs() -> Iterator[str]:
    top = tempfile.mkdtemp(prefix="pyagent-pl-")
    path = os.path.join(top, "bpffs")
    os.mkdir(path)
    fs.mount(path)
    try:
        yield path
    finally:
        fs.umount(path)
        os.rmdir(path)
        os.rmdir(top)


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
    loaded = parallel_load.start_tc_load(bpffs, CAPS, TC_CAPS, xdp=True)
    assert any(t.name == "tc-load" for t in threading.enumerate())  # not waiting for us
    lb = socket_lb.load_out_of_process(bpffs, CAPS)
    tc_lb = loaded()
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


def test_without_xdp_the_compile_leaves_lb_xdp_ingress_out() -> None:
    from ebpf import compiler

    with tc.load(None, CAPS, TC_CAPS, xdp=False) as lb:
        assert set(lb.prog_fds) == set(tc.PROGRAMS)
        with pytest.raises(Exception, match="lb_xdp_ingress"):
            compiler.load_prog(lb.bpf, tc.PROG_XDP, compiler.PROG_TYPE_XDP)
    with tc.load(None, CAPS, TC_CAPS, xdp=True) as lb:
        assert tc.PROG_XDP in lb.prog_fds
