"""A minimal BTF blob of integer types, for maps the kernel creates only with
BTF (sk_storage wants its key described as a 32-bit int) when no compiler
ran to emit it. The format: include/uapi/linux/btf.h and
Documentation/bpf/btf.rst (a header, then the type section, then the
NUL-separated string section)."""

from __future__ import annotations

import struct

from ebpf import libbpf

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BTF_KIND_INT = 1
BTF_INT_SIGNED = 1 << 0


def ints_blob(types: list[tuple[str, int, bool]]) -> bytes:
    """BTF holding integer types [(name, size in bytes, signed)]; their type
    ids are their positions in `types` counted from 1 (0 is void)."""
    strings = b"\0"
    body = b""
    for name, size, signed in types:
        name_off = len(strings)
        strings += name.encode() + b"\0"
        # struct btf_type {name_off, info = kind << 24 | vlen, size}, then the
        # int's encoding << 24 | bit offset << 16 | bits
        body += struct.pack("<III", name_off, BTF_KIND_INT << 24, size)
        body += struct.pack("<I", (BTF_INT_SIGNED if signed else 0) << 24 | size * 8)
    header = struct.pack("<HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, 24,
                         0, len(body), len(body), len(strings))
    return header + body + strings


def load_ints(types: list[tuple[str, int, bool]]) -> int:
    """The fd of a kernel BTF object of `types` (see ints_blob)."""
    return libbpf.btf_load(ints_blob(types))
