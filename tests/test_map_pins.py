"""map_pins: the agent creates every pinned map itself (no compile), each as
BCC makes it of bpf_src/lib/maps.h and tc_maps.h; compatible pins are kept
with their entries, incompatible ones replaced."""

from __future__ import annotations

import ctypes
import logging
import os

import pytest
from bcc import libbcc

from ebpf import libbpf
from ebpf.maps import Map
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import map_pins, socket_lb, tc

pytestmark = pytest.mark.root

CAPS = socket_lb.Capacities(256, 512, 128, 1024, 64, 32, 16)
TC_CAPS = tc.TcCapacities(ct=512, src_range=64, maglev=16)


def shape(info: libbpf.MapInfo) -> tuple[int, int, int, int, int]:
    return (info.type, info.key_size, info.value_size, info.max_entries, info.flags)


def pinned_info(bpffs: str, spec: L.MapSpec) -> libbpf.MapInfo:
    fd = libbpf.obj_get(spec.pin_path(bpffs))
    try:
        return libbpf.map_info(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("caps", [(socket_lb.Capacities(), tc.TcCapacities()),
                                  (CAPS, TC_CAPS)], ids=["defaults", "configured"])
def test_the_maps_are_made_as_bcc_makes_them_of_the_headers(bpffs: str, caps) -> None:
    made = map_pins.pin_maps(bpffs, tc._sizes(*caps))
    assert len(made) == len(map_pins.specs(True))
    # BCC's own maps of the same capacities (private: LB_NO_PIN)
    with tc.load(None, *caps, xdp=False) as lb:
        for name, spec in map_pins.specs(True).items():
            theirs = libbpf.map_info(libbcc.lib.bpf_table_fd(lb.bpf.module, name.encode()))
            ours = pinned_info(bpffs, spec)
            assert shape(ours) == shape(theirs), name
            assert ours.name == theirs.name == name


def test_a_compatible_pin_is_kept_with_its_entries_an_incompatible_one_replaced(
        bpffs: str, caplog) -> None:
    sizes = tc._sizes(CAPS, TC_CAPS)
    map_pins.pin_maps(bpffs, sizes)
    backends = L.MAPS["lb4_backends"]
    with Map.open_pinned(backends.pin_path(bpffs), ctypes.c_uint32, L.Lb4Backend) as m:
        m.set(ctypes.c_uint32(7), L.Lb4Backend(address=L.ip4("10.0.0.7"), port=L.be16(80)))
    kept = pinned_info(bpffs, backends).id
    ct = L.TC_MAPS["lb4_ct"]
    old_ct = pinned_info(bpffs, ct).id
    bigger = dict(sizes, LB_CT_MAP_MAX=1024)
    with caplog.at_level(logging.WARNING):
        made = map_pins.pin_maps(bpffs, bigger)
    assert made == [ct.pin_path(bpffs), L.TC_MAPS["lb6_ct"].pin_path(bpffs)]
    assert "replacing incompatible pinned map" in caplog.text and "max_entries 512" in caplog.text
    new_ct = pinned_info(bpffs, ct)
    assert new_ct.id != old_ct and new_ct.max_entries == 1024
    assert pinned_info(bpffs, backends).id == kept
    with Map.open_pinned(backends.pin_path(bpffs), ctypes.c_uint32, L.Lb4Backend) as m:
        got = m.get(ctypes.c_uint32(7))
        assert isinstance(got, L.Lb4Backend) and L.from_ip4(got.address) == "10.0.0.7"


def test_the_socket_lb_alone_pins_no_tc_map(bpffs: str) -> None:
    made = map_pins.pin_maps(bpffs, CAPS.defines(), tc_maps=False)
    assert {os.path.basename(p) for p in made} == {s.pin_name for s in L.MAPS.values()}
    assert not any(os.path.exists(s.pin_path(bpffs)) for s in L.TC_MAPS.values())
