"""Packs the reconciler's logical entries into the exact bytes of the structs
in bpf_src/lb_types.h, and back. struct formats are used instead of ctypes
objects on the hot path (a full sync packs ~200k entries); tests/test_layout.py
checks every format against the compiled object's sizes and offsets."""

from __future__ import annotations

import functools
import socket
import struct

# Network-order fields (addresses, ports) are packed as raw bytes.
FORMATS = {
    ("services", 4): ("<4s2sHBB2x", "<IIHHIHBx"),     # lb4_key -> lb_service
    ("services", 6): ("<16s2sHBB2x", "<IIHHIHBx"),    # lb6_key -> lb_service
    ("backends", 4): ("<I", "<4s2sBBBB2x"),            # id -> lb4_backend
    ("backends", 6): ("<I", "<16s2sBBBB2x"),           # id -> lb6_backend
    ("revnat", 4): ("<I", "<4s2s2x"),                  # id -> lb4_reverse_nat
    ("revnat", 6): ("<I", "<16s2s2x4x"),               # id -> lb6_reverse_nat
    ("affmatch", 0): ("<IIB3x", "<B"),                  # lb_affinity_match_key -> u8
}
STRUCTS = {k: (struct.Struct(kf), struct.Struct(vf)) for k, (kf, vf) in FORMATS.items()}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def ip_bytes(ip: str, family: int) -> bytes:
    # Not cached: inet_pton is as fast as an LRU lookup, and a cache of every
    # backend address held 20 MiB at 100k endpoints (its nodes, keys, values).
    return socket.inet_pton(_AF[family], ip)


def ip_str(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


@functools.lru_cache(maxsize=1 << 16)
def port_bytes(port: int) -> bytes:
    return port.to_bytes(2, "big")


def pack_key(m: str, family: int, key: tuple) -> bytes:
    kst = STRUCTS[(m, family)][0]
    if m == "services":
        ip, port, proto, scope, slot = key
        return kst.pack(ip_bytes(ip, family), port_bytes(port), slot, proto, scope)
    return kst.pack(*key)


def pack_value(m: str, family: int, value: tuple) -> bytes:
    vst = STRUCTS[(m, family)][1]
    if m in ("services", "affmatch"):
        return vst.pack(*value)
    if m == "backends":
        ip, port, proto, state, flags, zone = value
        return vst.pack(ip_bytes(ip, family), port_bytes(port), proto, state, flags, zone)
    ip, port = value
    return vst.pack(ip_bytes(ip, family), port_bytes(port))


def unpack_key(m: str, family: int, raw: bytes) -> tuple:
    kst = STRUCTS[(m, family)][0]
    if m == "services":
        addr, port, slot, proto, scope = kst.unpack(raw)
        return (ip_str(addr), int.from_bytes(port, "big"), proto, scope, slot)
    return kst.unpack(raw)


def unpack_value(m: str, family: int, raw: bytes) -> tuple:
    vst = STRUCTS[(m, family)][1]
    fields = vst.unpack(raw)
    if m in ("services", "affmatch"):
        return fields
    if m == "backends":
        addr, port, proto, state, flags, zone = fields
        return (ip_str(addr), int.from_bytes(port, "big"), proto, state, flags, zone)
    addr, port = fields
    return (ip_str(addr), int.from_bytes(port, "big"))


def pack_keys(m: str, family: int, keys: list[tuple]) -> bytes:
    """pack_key over many keys, as one buffer for a batch call (hot path)."""
    pack = STRUCTS[(m, family)][0].pack
    if m == "services":
        ipb, pb = ip_bytes, port_bytes
        return b"".join([pack(ipb(ip, family), pb(port), slot, proto, scope)
                         for ip, port, proto, scope, slot in keys])
    return b"".join([pack(*k) for k in keys])


def pack_values(m: str, family: int, values: list[tuple]) -> bytes:
    """pack_value over many values, as one buffer for a batch call (hot path)."""
    pack = STRUCTS[(m, family)][1].pack
    if m in ("services", "affmatch"):
        return b"".join([pack(*v) for v in values])
    ipb, pb = ip_bytes, port_bytes
    if m == "backends":
        return b"".join([pack(ipb(ip, family), pb(port), proto, state, flags, zone)
                         for ip, port, proto, state, flags, zone in values])
    return b"".join([pack(ipb(ip, family), pb(port)) for ip, port in values])
