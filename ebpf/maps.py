"""Typed access to a BPF map through its fd, with ctypes key/value types.

Bulk paths use the batch syscalls (one syscall per chunk instead of one per
entry) and fall back to per-entry calls where a kernel or map type lacks them.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from ebpf import libbpf

K = TypeVar("K", bound=ctypes._SimpleCData | ctypes.Structure | ctypes.Union)
V = TypeVar("V", bound=ctypes._SimpleCData | ctypes.Structure | ctypes.Union)

# enum bpf_map_type values whose values are per CPU
_PERCPU_TYPES = {5, 6, 10, 21}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
_BATCH_CHUNK = 8192
# Errors that mean "no batch ops here", not "bad data". 524 is the kernel's
# internal ENOTSUPP, which bpf() returns for a map type without batch ops
# (LPM tries before 6.x, for one).
ENOTSUPP_KERNEL = 524
_NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, ENOTSUPP_KERNEL)


def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value count of per-CPU maps."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


class Map(Generic[K, V]):
    """A BPF map with ctypes key and value types.

    Per-CPU maps return and take a list of values, one per possible CPU.
    The Map owns its fd: close() it or use it as a context manager."""

    def __init__(self, fd: int, key_type: type[K], value_type: type[V], name: str = ""):
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.info = libbpf.map_info(fd)
        self.name = name or self.info.name
        self.percpu = self.info.type in _PERCPU_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1
        # Per-CPU values are laid out at 8-byte strides.
        self._stride = (ctypes.sizeof(value_type) + 7) & ~7 if self.percpu else 0
        if self.info.key_size != ctypes.sizeof(key_type):
            raise ValueError(
                f"map {self.name}: key is {self.info.key_size} bytes, "
                f"{key_type.__name__} is {ctypes.sizeof(key_type)}"
            )
        if self.info.value_size != ctypes.sizeof(value_type):
            raise ValueError(
                f"map {self.name}: value is {self.info.value_size} bytes, "
                f"{value_type.__name__} is {ctypes.sizeof(value_type)}"
            )

    @classmethod
    def open_pinned(cls, path: str, key_type: type[K], value_type: type[V]) -> Map[K, V]:
        fd = libbpf.obj_get(path)
        try:
            return cls(fd, key_type, value_type, name=os.path.basename(path))
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_entries(self) -> int:
        return self.info.max_entries

    # values <-> buffers

    def _value_buf(self, n: int = 1) -> ctypes.Array:
        size = self._stride * self.ncpus if self.percpu else ctypes.sizeof(self.value_type)
        return (ctypes.c_uint8 * (size * n))()

    def _decode(self, buf, offset: int = 0) -> V | list[V]:
        if not self.percpu:
            return self.value_type.from_buffer_copy(buf, offset)
        return [
            self.value_type.from_buffer_copy(buf, offset + cpu * self._stride)
            for cpu in range(self.ncpus)
        ]

    def _encode(self, value: V | list[V]) -> bytes:
        if not self.percpu:
            return bytes(value)  # type: ignore[arg-type]
        values = list(value)  # type: ignore[arg-type]
        if len(values) != self.ncpus:
            raise ValueError(f"map {self.name}: need {self.ncpus} per-CPU values")
        pad = b"\0" * (self._stride - ctypes.sizeof(self.value_type))
        return b"".join(bytes(v) + pad for v in values)

    # single entries

    def get(self, key: K) -> V | list[V] | None:
        buf = self._value_buf()
        return self._decode(buf) if libbpf.map_lookup_elem(self.fd, key, buf) else None

    def set(self, key: K, value: V | list[V], flags: int = libbpf.BPF_ANY) -> None:
        libbpf.map_update_elem(self.fd, key, self._encode(value), flags)

    def delete(self, key: K) -> bool:
        """False when the key was absent."""
        return libbpf.map_delete_elem(self.fd, key)

    # iteration

    def keys(self) -> Iterator[K]:
        """Keys by get_next_key (entries may change while iterating)."""
        prev = None
        while True:
            nxt = self.key_type()
            if not libbpf.map_get_next_key(self.fd, prev, nxt):
                return
            yield nxt
            prev = nxt

    def items(self) -> Iterator[tuple[K, V | list[V]]]:
        """All entries, batched where the kernel supports it."""
        vsize = len(self._value_buf())
        for kbuf, vbuf, n in self._chunks():
            ksize = ctypes.sizeof(self.key_type)
            for i in range(n):
                yield self.key_type.from_buffer_copy(kbuf, i * ksize), self._decode(
                    vbuf, i * vsize
                )

    def items_raw(self) -> Iterator[tuple[bytes, bytes]]:
        """All entries as (key bytes, value bytes); per-CPU values are the
        kernel's concatenation of 8-byte-aligned per-CPU slots."""
        ksize = ctypes.sizeof(self.key_type)
        vsize = len(self._value_buf())
        for kbuf, vbuf, n in self._chunks():
            kb, vb = bytes(kbuf), bytes(vbuf)
            for i in range(n):
                yield kb[i * ksize : (i + 1) * ksize], vb[i * vsize : (i + 1) * vsize]

    def _chunks(self) -> Iterator[tuple[ctypes.Array, ctypes.Array, int]]:
        try:
            yield from self._chunks_batch()
        except OSError as e:
            if e.errno not in _NO_BATCH or getattr(e, "started", False):
                raise
            yield from self._chunks_slow()

    def _chunks_slow(self) -> Iterator[tuple[ctypes.Array, ctypes.Array, int]]:
        for key in self.keys():
            value = self._value_buf()
            if libbpf.map_lookup_elem(self.fd, key, value):  # else deleted meanwhile
                yield key, value, 1

    def _chunks_batch(self) -> Iterator[tuple[ctypes.Array, ctypes.Array, int]]:
        # Hash maps use a bucket cursor, arrays a key: max(key, 8) fits both.
        out_tok = (ctypes.c_uint8 * max(ctypes.sizeof(self.key_type), 8))()
        in_tok = None
        chunk = min(_BATCH_CHUNK, max(self.max_entries, 1))
        started = False
        while True:
            keys = (self.key_type * chunk)()
            values = self._value_buf(chunk)
            try:
                n, more = libbpf.map_lookup_batch(self.fd, in_tok, out_tok, keys, values, chunk)
            except OSError as e:
                if e.errno == errno.ENOSPC and chunk < self.max_entries:
                    chunk *= 2  # one hash bucket holds more than chunk entries
                    continue
                e.started = started  # type: ignore[attr-defined]
                raise
            started = True
            if n:
                yield keys, values, n
            if not more:
                return
            in_tok = bytes(out_tok)

    def count(self) -> int:
        """Number of entries (walks the map: O(entries))."""
        return sum(1 for _ in self.items())

    # bulk writes; the *_raw forms take packed buffers (codec.py's hot path)

    def update_many(
        self, pairs: Iterable[tuple[K, V | list[V]]], flags: int = libbpf.BPF_ANY
    ) -> int:
        """Write many entries; returns how many."""
        pairs = list(pairs)
        keys = b"".join(bytes(k) for k, _ in pairs)
        values = b"".join(self._encode(v) for _, v in pairs)
        return self.update_many_raw(keys, values, flags)

    def update_many_raw(self, keys: bytes, values: bytes, flags: int = libbpf.BPF_ANY) -> int:
        """Write packed keys/values (count = len(keys) / key size). Batched,
        one entry at a time if the kernel refuses batches."""
        ksize = ctypes.sizeof(self.key_type)
        vsize = len(values) // max(len(keys) // ksize, 1)
        total = len(keys) // ksize
        done = 0
        for start in range(0, total, _BATCH_CHUNK):
            n = min(_BATCH_CHUNK, total - start)
            kpart = memoryview(keys)[start * ksize : (start + n) * ksize]
            vpart = memoryview(values)[start * vsize : (start + n) * vsize]
            try:
                done += libbpf.map_update_batch(self.fd, kpart, vpart, n, flags)
            except OSError as e:
                if e.errno not in _NO_BATCH:
                    raise
                # A kernel that refuses the op outright leaves the count as
                # it was (all n): nothing went in then.
                went_in = getattr(e, "processed", 0)
                for i in range(went_in if went_in < n else 0, n):
                    libbpf.map_update_elem(
                        self.fd,
                        kpart[i * ksize : (i + 1) * ksize],
                        vpart[i * vsize : (i + 1) * vsize],
                        flags,
                    )
                done += n
        return done

    def delete_many(self, keys: Iterable[K]) -> int:
        """Delete keys; returns how many existed. Missing keys are skipped."""
        return self.delete_many_raw(b"".join(bytes(k) for k in keys))

    def delete_many_raw(self, keys: bytes) -> int:
        ksize = ctypes.sizeof(self.key_type)
        total = len(keys) // ksize
        deleted = 0
        start = 0
        while start < total:
            n = min(_BATCH_CHUNK, total - start)
            part = memoryview(keys)[start * ksize : (start + n) * ksize]
            try:
                deleted += libbpf.map_delete_batch(self.fd, part, n)
                start += n
                continue
            except OSError as e:
                # ENOENT: a key was missing and the batch stopped there.
                if e.errno in _NO_BATCH:
                    rest = memoryview(keys)[start * ksize :]
                    return deleted + sum(
                        libbpf.map_delete_elem(self.fd, rest[i : i + ksize])
                        for i in range(0, len(rest), ksize)
                    )
                if e.errno != errno.ENOENT:
                    raise
                done = getattr(e, "processed", 0)
            deleted += done
            start += done
            if start < total:  # the key that stopped it, one at a time
                deleted += libbpf.map_delete_elem(
                    self.fd, memoryview(keys)[start * ksize : (start + 1) * ksize]
                )
                start += 1
        return deleted

    def clear(self) -> int:
        """Delete every entry (not for arrays); returns how many."""
        return self.delete_many(list(self.keys()))
