"""The Python mirrors in layout.py against bpf_src: struct layouts against
what BCC compiled, constants against the header, map names and types
against bpf_src/lib/maps.h."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

from pyagent.dataplanes.ebpf import layout, socket_lb, tc

HEADER = os.path.join(socket_lb.BPF_SRC_DIR, "lb_types.h")


def _fields(t: type) -> dict[str, tuple[int, int, type]]:
    """name -> (offset, size, type) of a ctypes struct/union, padding
    fields that BCC invents (__pad_*) left out."""
    out = {}
    for name, ftype, *_ in getattr(t, "_fields_", []):
        if name.startswith("__pad"):
            continue
        desc = getattr(t, name)
        out[name] = (desc.offset, desc.size, ftype)
    return out


def assert_same_layout(mine: type, compiled: type, where: str) -> None:
    assert ctypes.sizeof(mine) == ctypes.sizeof(compiled), f"{where}: sizeof"
    a, b = _fields(mine), _fields(compiled)
    assert set(a) == set(b), f"{where}: fields {sorted(a)} != {sorted(b)}"
    for name, (off, size, ftype) in a.items():
        boff, bsize, btype = b[name]
        assert (off, size) == (boff, bsize), f"{where}.{name}: offset/size"
        if hasattr(ftype, "_fields_"):
            assert_same_layout(ftype, btype, f"{where}.{name}")


@pytest.fixture(scope="module")
def compiled():
    """sock_lb.c compiled with private (unpinned) maps."""
    from ebpf import compiler

    b = compiler.compile_file(
        socket_lb.SOURCE, [socket_lb.BPF_SRC_DIR],
        socket_lb.defines(None, socket_lb.Capacities(64, 64, 64, 64, 64, 64)),
    )
    yield b
    b.cleanup()


@pytest.fixture(scope="module")
def compiled_tc():
    """tc_nat.c (LB maps + TC maps) compiled with private maps."""
    from ebpf import compiler

    b = compiler.compile_file(
        tc.SOURCE, [socket_lb.BPF_SRC_DIR],
        tc.defines(None, socket_lb.Capacities(64, 64, 64, 64, 64, 64), tc.TcCapacities(64, 64)),
    )
    yield b
    b.cleanup()


ALL_MAPS = {**layout.MAPS, **layout.TC_MAPS}
# tc_nat.c's private per-CPU scratch: never pinned, never read by user space.
TC_PRIVATE_MAPS = {"lb_tc_scratch"}


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(ALL_MAPS))
def test_map_layout_matches_bcc(compiled, compiled_tc, name):
    from ebpf import libbpf

    spec = ALL_MAPS[name]
    b = compiled if name in layout.MAPS else compiled_tc
    if spec.map_type in (layout.MAP_TYPE_SK_STORAGE, layout.MAP_TYPE_RINGBUF):
        # BCC's Python has no wrapper for socket storage, and a ring buffer
        # has no key or value: the kernel's view of the map (sizes below)
        # is the check.
        from bcc import lib as bcclib

        fd = bcclib.bpf_table_fd(b.module, name.encode())
    else:
        table = b[name.encode()]
        assert_same_layout_or_scalar(spec.key, table.Key, f"{name}.key")
        # Per-CPU tables: BCC's Leaf is the per-CPU array, sLeaf one value.
        leaf = getattr(table, "sLeaf", table.Leaf)
        assert_same_layout_or_scalar(spec.value, leaf, f"{name}.value")
        fd = table.map_fd

    info = libbpf.map_info(fd)
    assert info.type == spec.map_type
    assert info.name == name  # fits the kernel's 15-character limit
    assert (info.key_size, info.value_size) == (
        ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))


def assert_same_layout_or_scalar(mine: type, compiled: type, where: str) -> None:
    if hasattr(mine, "_fields_"):
        assert_same_layout(mine, compiled, where)
    else:
        assert ctypes.sizeof(mine) == ctypes.sizeof(compiled), where


@pytest.mark.root
def test_maps_h_declares_exactly_the_layout_maps(compiled, compiled_tc):
    assert _table_names(compiled) == set(layout.MAPS)
    # The TC programs share every LB map and add their own.
    assert _table_names(compiled_tc) == set(ALL_MAPS) | TC_PRIVATE_MAPS


def _table_names(b) -> set[str]:
    # A private handle, so setting restype does not touch BCC's own.
    lib = ctypes.CDLL("libbcc.so.0")
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return {lib.bpf_table_name(b.module, i).decode()
            for i in range(lib.bpf_num_tables(b.module))}


def test_every_header_struct_is_mirrored():
    """Every struct in lb_types.h has a mirror in C_STRUCTS, and every mirror
    but the address union (checked inside its users), the ring buffer record
    and the DSR option formats (packets, not map entries; checked by gcc
    below) is some map's key or value."""
    import re

    with open(HEADER) as f:
        declared = set(re.findall(r"^(?:struct|union) (\w+) \{", f.read(), re.M))
    assert declared == set(layout.C_STRUCTS)
    used = {m.key for m in ALL_MAPS.values()} | {m.value for m in ALL_MAPS.values()}
    for cname, mirror in layout.C_STRUCTS.items():
        assert mirror in used or cname in ("lb_v6addr", "lb_event", "lb_dsr4_opt",
                                           "lb_dsr6_hdr"), f"{cname} is in no map"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_constants_match_header(tmp_path):
    """layout's constants and struct sizes, asserted at compile time by gcc
    against the header itself."""
    lines = ["#include <linux/types.h>", f'#include "{HEADER}"', "#include <stddef.h>"]
    for name, value in layout.C_CONSTANTS.items():
        lines.append(f'_Static_assert({name} == {value}, "{name}");')
    for cname, mirror in layout.C_STRUCTS.items():
        kind = "union" if issubclass(mirror, ctypes.Union) else "struct"
        lines.append(f"_Static_assert(sizeof({kind} {cname}) == {ctypes.sizeof(mirror)}, "
                     f'"sizeof {cname}");')
        for fname, (off, _size, _t) in _fields(mirror).items():
            lines.append(f"_Static_assert(offsetof({kind} {cname}, {fname}) == {off}, "
                         f'"{cname}.{fname}");')
    src = tmp_path / "check.c"
    src.write_text("\n".join(lines) + "\n")
    r = subprocess.run(["gcc", "-fsyntax-only", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_key_helpers_encode_network_order():
    k = layout.service_key("10.0.0.1", 80, "TCP")
    assert bytes(k)[:6] == bytes([10, 0, 0, 1, 0, 80])
    assert (k.proto, k.scope, k.backend_slot) == (6, layout.SCOPE_INTERNAL, 0)
    k6 = layout.service_key("fd00::1", 53, "UDP", slot=2)
    assert bytes(k6)[:20] == bytes.fromhex("fd000000000000000000000000000001") + b"\0\x35\2\0"
    assert layout.to_dict(layout.backend_value("fd00::2", 8080, 6)) == {
        "address": "fd00::2", "port": 8080, "proto": 6, "state": 0, "flags": 0, "zone": 0}


def test_pin_names_carry_the_layout_version():
    assert not set(layout.MAPS) & set(layout.TC_MAPS)
    for spec in ALL_MAPS.values():
        assert spec.pin_name.endswith(f"_v{layout.LAYOUT_VERSION}")
        assert spec.pin_path("/b") == f"/b/maps/{spec.pin_name}"


@pytest.mark.root
def test_source_text_for_bpf_print_pins_nothing(tmp_path):
    text = socket_lb.source_text(socket_lb.Capacities(64, 64, 64, 64, 64, 64))
    assert "int lb4_connect(struct bpf_sock_addr *ctx)" in text
    assert "-D LB_NO_PIN" in text and "-D PIN_DIR" not in text


@pytest.mark.root
def test_tc_source_text_pins_nothing():
    text = tc.source_text(socket_lb.Capacities(64, 64, 64, 64, 64, 64), tc.TcCapacities(64, 64))
    assert "int lb_netdev_ingress(struct __sk_buff *skb)" in text
    assert "-D PIN_DIR" not in text
