"""Create and pin every map of the socket LB (and of the TC programs) with
bpf() calls, before any program is compiled: the loads of sock_lb.c and
tc_nat.c then run side by side and only reuse the pins (two loads creating
the same pin at once would race), and the agent fills the maps while they
compile. No compiler runs for this: it took a clang child 0.6 s per start.

Each map is made as BCC makes it of bpf_src/lib/maps.h and tc_maps.h (type,
key and value sizes, max_entries, flags, inner-map template; layout.MapSpec,
held against BCC's by tests/test_map_pins.py). BTF is given only where the
kernel requires it (sk_storage: a 32-bit int key); the programs, which load
with -g0 once every pin exists, need none. A pin that is compatible is kept
with its entries (a restart); one of another layout or size is replaced,
loudly, as the loads would.
"""

from __future__ import annotations

import ctypes
import logging
import os

from ebpf import bpffs as fs
from ebpf import btf, libbpf
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import socket_lb

log = logging.getLogger(__name__)

# sk_storage's BTF: key type 1 (int, the kernel checks it), value type 2
_SK_STORAGE_BTF = [("int", 4, True), ("unsigned int", 4, False)]


def specs(tc_maps: bool) -> dict[str, L.MapSpec]:
    """The socket LB's maps, and the TC programs' (tc_maps)."""
    return {**L.MAPS, **(L.TC_MAPS if tc_maps else {})}


def pin_maps(bpffs: str, sizes: dict[str, int], tc_maps: bool = True) -> list[str]:
    """Create and pin whatever map of `specs(tc_maps)` has no compatible pin;
    `sizes`: the capacity defines (max_entries by define, e.g.
    Capacities().defines()). Returns the pins it created or replaced."""
    wanted = specs(tc_maps)
    fs.ensure(bpffs)
    os.makedirs(socket_lb.maps_dir(bpffs), exist_ok=True)
    for path, why in socket_lb.incompatible_pins(bpffs, wanted, sizes):
        log.warning("replacing incompatible pinned map %s: %s", path, why)
        fs.unpin(path)
    made: list[str] = []
    btf_fd: int | None = None
    try:
        for spec in wanted.values():
            path = spec.pin_path(bpffs)
            if os.path.exists(path):
                continue
            sk_storage = spec.map_type == L.MAP_TYPE_SK_STORAGE
            if sk_storage and btf_fd is None:
                btf_fd = btf.load_ints(_SK_STORAGE_BTF)
            fd = _create(spec, bpffs, sizes, btf_fd if sk_storage else None)
            try:
                fs.pin(fd, path)
            finally:
                os.close(fd)
            made.append(path)
    finally:
        if btf_fd is not None:
            os.close(btf_fd)
    return made


def max_entries(spec: L.MapSpec, sizes: dict[str, int]) -> int:
    return sizes.get(spec.capacity_define, spec.entries) if spec.capacity_define \
        else spec.entries


def _create(spec: L.MapSpec, bpffs: str, sizes: dict[str, int], btf_fd: int | None) -> int:
    # the template is made before its map of maps (specs' order), or kept
    inner_fd = fs.open_pinned(specs(True)[spec.inner].pin_path(bpffs)) if spec.inner else None
    try:
        return libbpf.map_create(
            spec.map_type, spec.name, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
            max_entries(spec, sizes), flags=spec.flags, inner_map_fd=inner_fd,
            btf=None if btf_fd is None else (btf_fd, 1, 2))
    finally:
        if inner_fd is not None:
            os.close(inner_fd)
