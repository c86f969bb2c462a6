"""The codec's struct formats against the ctypes mirrors of lb_types.h (which
tests/test_layout.py checks against the compiled object), and round trips."""

from __future__ import annotations

import ctypes

import pytest

from pyagent.dataplanes.ebpf import codec
from pyagent.dataplanes.ebpf import layout as L

MIRRORS = {
    ("services", 4): (L.Lb4Key, L.LbService),
    ("services", 6): (L.Lb6Key, L.LbService),
    ("backends", 4): (ctypes.c_uint32, L.Lb4Backend),
    ("backends", 6): (ctypes.c_uint32, L.Lb6Backend),
    ("revnat", 4): (ctypes.c_uint32, L.Lb4ReverseNat),
    ("revnat", 6): (ctypes.c_uint32, L.Lb6ReverseNat),
    ("affmatch", 0): (L.LbAffinityMatchKey, ctypes.c_uint8),
}


@pytest.mark.parametrize("which", sorted(codec.FORMATS))
def test_formats_have_the_struct_sizes(which) -> None:
    kst, vst = codec.STRUCTS[which]
    key, value = MIRRORS[which]
    assert (kst.size, vst.size) == (ctypes.sizeof(key), ctypes.sizeof(value))


def test_service_key_bytes_match_the_ctypes_struct() -> None:
    raw = codec.pack_key("services", 4, ("10.96.0.10", 80, 6, 1, 3))
    k = L.Lb4Key.from_buffer_copy(raw)
    assert (L.from_ip4(k.address), L.from_be16(k.dport), k.proto, k.scope,
            k.backend_slot) == ("10.96.0.10", 80, 6, 1, 3)
    raw6 = codec.pack_key("services", 6, ("fd00::a", 53, 17, 0, 0))
    k6 = L.Lb6Key.from_buffer_copy(raw6)
    assert (L.from_ip6(k6.address), L.from_be16(k6.dport), k6.proto) == ("fd00::a", 53, 17)
    m = L.LbAffinityMatchKey.from_buffer_copy(codec.pack_key("affmatch", 0, (7, 70000, 1)))
    assert (m.backend_id, m.rev_nat_id, m.scope) == (7, 70000, 1)
    v = L.LbService.from_buffer_copy(codec.pack_value("services", 4, (0, 0, 2, 1, 70000, 9, 3)))
    assert (v.count, v.qcount, v.rev_nat_id, v.flags, v.algorithm) == (2, 1, 70000, 9, 3)


@pytest.mark.parametrize(("m", "fam", "key", "value"), [
    ("services", 4, ("10.96.0.10", 80, 6, 1, 0), (0, 30, 3, 0, 7, 65, 1)),
    ("services", 6, ("fd00::10", 443, 6, 0, 2), (12, 0, 0, 0, 0, 0, 0)),
    ("backends", 4, (5,), ("10.244.0.10", 8080, 6, 0, 1, 0)),
    ("backends", 6, (9,), ("fd00:244::a", 8080, 17, 1, 0, 2)),
    ("revnat", 4, (3,), ("10.96.0.10", 80)),
    ("revnat", 6, (4,), ("fd00::10", 53)),
    ("affmatch", 0, (5, 3, 1), (1,)),
    # frontend (rev-NAT) ids past 16 bits: 100,000 Services on a node
    ("services", 4, ("10.96.0.11", 80, 6, 1, 0), (0, 0, 10, 0, 0x1_86A0, 1, 0)),
    ("revnat", 4, (0x1_86A0,), ("10.96.0.11", 80)),
    ("affmatch", 0, (5, 0x1_86A0, 1), (1,)),
])
def test_round_trip(m, fam, key, value) -> None:
    assert codec.unpack_key(m, fam, codec.pack_key(m, fam, key)) == key
    assert codec.unpack_value(m, fam, codec.pack_value(m, fam, value)) == value


def test_bulk_packing_equals_one_by_one() -> None:
    cases = {("services", 4): ([("10.96.0.1", 80, 6, 1, 0), ("10.96.0.1", 80, 6, 1, 1)],
                               [(0, 0, 1, 0, 3, 1, 0), (5, 0, 0, 0, 0, 0, 0)]),
             ("backends", 6): ([(1,), (2,)], [("fd00::1", 80, 6, 0, 0, 0),
                                              ("fd00::2", 81, 17, 1, 1, 0)]),
             ("revnat", 4): ([(1,)], [("10.96.0.1", 80)]),
             ("affmatch", 0): ([(1, 2, 1)], [(1,)])}
    for (m, f), (keys, values) in cases.items():
        assert codec.pack_keys(m, f, keys) == b"".join(codec.pack_key(m, f, k) for k in keys)
        assert codec.pack_values(m, f, values) == b"".join(
            codec.pack_value(m, f, v) for v in values)


def test_dsr_option_formats_match_the_layout() -> None:
    import ctypes

    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import packet as P

    assert len(P.dsr_option4("192.0.2.1", 80)) == ctypes.sizeof(L.LbDsr4Opt) == 8
    h = L.LbDsr6Hdr.from_buffer_copy(P.dsr_header6(6, "2001:db8::1", 443))
    assert (h.nexthdr, h.hdrlen, h.type, h.len, h.pad_type) == (6, 2, P.DSR_OPT6, 18, 1)
    assert ctypes.sizeof(L.LbDsr6Hdr) == (h.hdrlen + 1) * 8
