"""Pod interfaces named by prefix (`veth+`, `lxc+`, `cali+`: Cilium's
spelling for devices): the host sides of pods' veths come and go with the
pods, so the TC programs go onto every matching link at start and onto each
new one as the kernel announces it (RTM_NEWLINK), before the pod's first
packet. A pod whose connections the socket LB leaves alone has no balancer
until its link carries the programs.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

WILDCARD = "+"


def prefixes(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(n[:-1] for n in names if n.endswith(WILDCARD) and len(n) > 1)


def fixed(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(n for n in names if not n.endswith(WILDCARD))


def expand(names: Iterable[str], netns: str | None = None) -> list[str]:
    """Fixed names as given, patterns as the links matching them now."""
    from pyagent.dataplanes.ebpf import tc

    names = tuple(names)
    out = list(fixed(names))
    if prefixes(names):
        out += [n for n in tc.interfaces(netns, prefixes(names)) if n not in out]
    return out


RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_IFNAME = 3
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_RTA = struct.Struct("=HH")


def link_events(data: bytes) -> Iterator[tuple[int, str]]:
    """(RTM_NEWLINK | RTM_DELLINK, ifname) of each link message in a
    netlink datagram; other messages and nameless links are skipped."""
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind = _NLMSG.unpack_from(data, off)[:2]
        if length < _NLMSG.size or off + length > len(data):
            return
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            pos, end = off + _NLMSG.size + _IFINFO.size, off + length
            while pos + _RTA.size <= end:
                rlen, rtype = _RTA.unpack_from(data, pos)
                if rlen < _RTA.size:
                    break
                if rtype == IFLA_IFNAME:
                    raw = data[pos + _RTA.size:pos + rlen]
                    yield kind, raw.split(b"\0", 1)[0].decode(errors="replace")
                    break
                pos += (rlen + 3) & ~3
        off += (length + 3) & ~3


class PodLinkWatcher:
    """Calls attach(ifname) for every new link of this network namespace
    whose name starts with one of the prefixes, from a thread of its own
    until stop(). A plain rtnetlink socket subscribed to RTMGRP_LINK."""

    def __init__(self, patterns: Iterable[str], attach: Callable[[str], None]) -> None:
        self.prefixes = prefixes(patterns)
        self.attach = attach
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK))  # subscribed first: no link missed between
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._run, name="pod-links", daemon=True)

    def start(self, existing: Iterable[str]) -> None:
        self.seen.update(existing)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                # ENOBUFS: events were lost; a rescan finds what they named
                log.warning("pod link events: %s; rescanning", exc)
                data = b""
                self._rescan()
            for kind, name in link_events(data):
                self._event(kind, name)

    def _rescan(self) -> None:
        from pyagent.dataplanes.ebpf import tc

        for name in tc.interfaces(None, self.prefixes):
            self._event(RTM_NEWLINK, name)

    def _event(self, kind: int, name: str) -> None:
        if not name.startswith(self.prefixes):
            return
        if kind == RTM_DELLINK:
            self.seen.discard(name)
        elif name not in self.seen:
            try:
                self.attach(name)
            except Exception as exc:  # the link may be gone already
                log.warning("pod interface %s: TC programs not attached: %s", name, exc)
                return
            self.seen.add(name)
            log.info("pod interface %s: TC programs attached", name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()
