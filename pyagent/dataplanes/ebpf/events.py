"""Decision events of the LB programs, for `pyagent monitor`.

The programs write a struct lb_event for every load-balancing decision,
but only while some monitor listens (lb_types.h, "decision events"): each
monitor creates its own ring buffer, puts it into a free slot of the pinned
lb_mon_rings and sets its bit in lb_monitor.mask. Own rings mean two
monitors each see every event (a ring buffer has one consumer position).

A monitor that exits clears its slot. One that is killed cannot, so every
registration first prunes slots whose owner is gone: the owner is recorded
as pid + process start time (a reused pid does not keep a dead monitor's
slot), and `prune()` is cheap enough for the agent to call on each sync.
Registration changes happen under an flock, so concurrent monitors never
overwrite each other's slot.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import mmap
import os
import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ebpf import libbpf
from ebpf.maps import Map
from pyagent.dataplanes.ebpf import layout as L

log = logging.getLogger(__name__)
RUN_DIR = Path(os.environ.get("PYAGENT_RUN_DIR", "/run/pyagent"))
_KEY = ctypes.c_uint32(L.MONITOR_KEY)
_BUSY, _DISCARD = 1 << 31, 1 << 30
_HDR = 8  # struct bpf_ringbuf_hdr: u32 len (+ busy/discard bits), u32 page offset


def proc_start(pid: int) -> int:
    """The start time (clock ticks after boot) of pid, 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # the command name (field 2) may hold spaces and parentheses: split after it
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    return pid > 0 and proc_start(pid) == start


@dataclass(frozen=True)
class Listeners:
    """The registration state, as `pyagent status` shows it."""

    live: list[int]   # pids of listening monitors
    stale: list[int]  # slots held by monitors that are gone (pruned on the next start)
    lost: int         # events not written because a ring was full (an indicator: a
                      # registration rewrites the entry and may drop increments meanwhile)


def _open(bpffs: str) -> tuple[Map, Map]:
    specs = {n: L.MAPS[n] for n in ("lb_monitor", "lb_mon_rings")}
    missing = [s.pin_path(bpffs) for s in specs.values() if not os.path.exists(s.pin_path(bpffs))]
    if missing:
        raise FileNotFoundError(
            "no decision-event maps (is the eBPF datapath loaded, by an agent of this "
            f"version?): {', '.join(missing)}")
    mon = Map.open_pinned(specs["lb_monitor"].pin_path(bpffs), ctypes.c_uint32, L.LbMonitor)
    try:
        rings = Map.open_pinned(specs["lb_mon_rings"].pin_path(bpffs), ctypes.c_uint32,
                                ctypes.c_uint32)
    except BaseException:
        mon.close()
        raise
    return mon, rings


class _Locked:
    """The registration lock of one bpffs (an flock on a file in RUN_DIR)."""

    def __init__(self, bpffs: str) -> None:
        digest = hashlib.sha256(os.path.realpath(bpffs).encode()).hexdigest()[:16]
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.path = RUN_DIR / f"monitor-{digest}.lock"

    def __enter__(self) -> _Locked:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the flock


def _prune(mon: Map, rings: Map, cur: L.LbMonitor) -> list[int]:
    """Free the slots of monitors that are gone (mask bit first, so the
    programs stop writing before the ring leaves). Returns their slots."""
    freed = []
    for slot in range(L.MONITOR_SLOTS):
        pid, start = cur.owner_pid[slot], cur.owner_start[slot]
        if not (cur.mask & (1 << slot)) and not pid:
            continue
        if _alive(pid, start):
            continue
        cur.mask &= ~(1 << slot)
        cur.owner_pid[slot], cur.owner_start[slot] = 0, 0
        freed.append(slot)
    if freed:
        mon.set(_KEY, cur)
        for slot in freed:
            rings.delete(ctypes.c_uint32(slot))
    return freed


def _read(mon: Map) -> L.LbMonitor:
    cur = mon.get(_KEY)
    assert isinstance(cur, L.LbMonitor)  # an array always has its entry
    return cur


def prune(bpffs: str) -> list[int]:
    """Reclaim the slots of killed monitors; [] when the maps are absent.
    Never raises OSError: the agent calls it on every full sync."""
    try:
        mon, rings = _open(bpffs)
    except OSError:
        return []
    try:
        with _Locked(bpffs):
            return _prune(mon, rings, _read(mon))
    except OSError as exc:
        log.warning("cannot reclaim monitor slots in %s: %s", bpffs, exc)
        return []
    finally:
        mon.close()
        rings.close()


def listeners(bpffs: str) -> Listeners:
    mon, rings = _open(bpffs)
    try:
        cur = _read(mon)
    finally:
        mon.close()
        rings.close()
    live, stale = [], []
    for slot in range(L.MONITOR_SLOTS):
        if cur.mask & (1 << slot) or cur.owner_pid[slot]:
            pid = cur.owner_pid[slot]
            (live if _alive(pid, cur.owner_start[slot]) else stale).append(pid or slot)
    return Listeners(live, stale, cur.lost)


class Ring:
    """A consumer of one BPF ring buffer (the kernel's mmap layout: a
    writable consumer-position page, then the producer-position page and
    the data pages, mapped twice in a row so records never wrap)."""

    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.fd, self.size, self.mask = fd, size, size - 1
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._page = page
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def close(self) -> None:
        self._cons.close()
        self._prod.close()

    def records(self) -> Iterator[bytes]:
        """Every complete record written so far, consumed as it is read."""
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        while True:
            prod = struct.unpack_from("<Q", self._prod, 0)[0]
            if cons >= prod:
                return
            off = self._page + (cons & self.mask)
            length = struct.unpack_from("<I", self._prod, off)[0]
            if length & _BUSY:  # still being written
                return
            n = length & ~(_BUSY | _DISCARD)
            data = None if length & _DISCARD else self._prod[off + _HDR:off + _HDR + n]
            cons += (n + _HDR + 7) & ~7
            struct.pack_into("<Q", self._cons, 0, cons)
            if data is not None:
                yield data

    def wait(self, timeout: float | None) -> None:
        self._poll.poll(None if timeout is None else max(0, int(timeout * 1000)))


class Listener:
    """This process's registration: its ring in a free slot, its bit set.
    A context manager; close() (also on errors) clears the slot again."""

    def __init__(self, bpffs: str) -> None:
        self.bpffs = bpffs
        self.slot: int | None = None
        self.ring_fd = -1
        self.ring: Ring | None = None
        self._mon, self._rings = _open(bpffs)
        try:
            self._register()
        except BaseException:
            self.close()
            raise

    def _register(self) -> None:
        self.ring_fd = libbpf.map_create(L.MAP_TYPE_RINGBUF, "lb_mon_client", 0, 0,
                                         L.MONITOR_RING_BYTES)
        self.ring = Ring(self.ring_fd, L.MONITOR_RING_BYTES)
        pid = os.getpid()
        with _Locked(self.bpffs):
            cur = _read(self._mon)
            _prune(self._mon, self._rings, cur)
            free = [s for s in range(L.MONITOR_SLOTS)
                    if not (cur.mask & (1 << s)) and not cur.owner_pid[s]]
            if not free:
                owners = ", ".join(str(p) for p in cur.owner_pid if p)
                raise RuntimeError(f"{L.MONITOR_SLOTS} monitors already listen "
                                   f"(pids {owners}); stop one first")
            slot = free[0]
            # the ring goes in before the bit: the programs never see a set bit
            # without a ring (they count that as lost anyway)
            self._rings.set(ctypes.c_uint32(slot), ctypes.c_uint32(self.ring_fd))
            cur.owner_pid[slot], cur.owner_start[slot] = pid, proc_start(pid)
            cur.mask |= 1 << slot
            self._mon.set(_KEY, cur)
            self.slot = slot
            self.lost_at_start = cur.lost

    def events(self, timeout: float | None = None) -> list[L.LbEvent]:
        """The events written since the last call, waiting up to timeout
        seconds (None: forever) for the first."""
        assert self.ring is not None
        out = [L.LbEvent.from_buffer_copy(r.ljust(ctypes.sizeof(L.LbEvent), b"\0"))
               for r in self.ring.records()]
        if not out:
            self.ring.wait(timeout)
            out = [L.LbEvent.from_buffer_copy(r.ljust(ctypes.sizeof(L.LbEvent), b"\0"))
                   for r in self.ring.records()]
        return out

    def lost(self) -> int:
        """Events lost (all listeners) since this one registered."""
        return _read(self._mon).lost - self.lost_at_start

    def close(self) -> None:
        if self.slot is not None:
            with _Locked(self.bpffs):
                cur = _read(self._mon)
                if cur.owner_pid[self.slot] == os.getpid():
                    cur.mask &= ~(1 << self.slot)
                    cur.owner_pid[self.slot], cur.owner_start[self.slot] = 0, 0
                    self._mon.set(_KEY, cur)
                    self._rings.delete(ctypes.c_uint32(self.slot))
            self.slot = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.ring_fd >= 0:
            os.close(self.ring_fd)
            self.ring_fd = -1
        self._mon.close()
        self._rings.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def monotonic_to_wall(ns: int) -> float:
    """bpf_ktime_get_ns() (CLOCK_MONOTONIC) -> Unix time."""
    return time.time() - (time.monotonic_ns() - ns) / 1e9
