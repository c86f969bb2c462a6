"""The userspace proxy: one asyncio loop (in its own thread) with a listener
per (service port, endpoint set), TCP and UDP.

iptables REDIRECT portals send new connections to the listeners, so the
destination is rewritten but the source is kept: the proxy sees the real
client address, which ClientIP affinity keys on. Endpoints are taken
round-robin; an affinity entry pins a client to its endpoint until it has
been idle for the timeout. Backends see the node's address (the proxy
connects from the node).

UDP replies must leave from the address the REDIRECTed datagram was sent to
(127.0.0.1 for the node's own traffic, the incoming interface's address
otherwise), or conntrack cannot map them back to the VIP: the listener asks
for IP_PKTINFO and answers with that address as the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IP_PKTINFO = 8  # linux/in.h; not exported by Python's socket module
CONNECT_TIMEOUT = 2.0
UDP_IDLE = 60.0


@dataclass
class Balancer:
    """Round-robin over endpoints with optional ClientIP affinity."""
    endpoints: list[tuple[str, int]]
    affinity: int = 0  # seconds; 0: none
    _next: itertools.count = field(default_factory=itertools.count)
    _sticky: dict[str, tuple[tuple[str, int], float]] = field(default_factory=dict)

    def pick(self, client: str, now: float | None = None) -> tuple[str, int] | None:
        if not self.endpoints:
            return None
        now = time.monotonic() if now is None else now
        if self.affinity:
            hit = self._sticky.get(client)
            if hit and hit[0] in self.endpoints and now - hit[1] < self.affinity:
                self._sticky[client] = (hit[0], now)
                return hit[0]
        ep = self.endpoints[next(self._next) % len(self.endpoints)]
        if self.affinity:
            self._sticky[client] = (ep, now)
        return ep

    def update(self, endpoints: list[tuple[str, int]], affinity: int) -> None:
        self.endpoints, self.affinity = endpoints, affinity
        if not affinity:
            self._sticky.clear()


class Listener:
    def __init__(self, proto: str, family: int, balancer: Balancer) -> None:
        self.proto, self.family, self.balancer = proto, family, balancer
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._udp: socket.socket | None = None
        self._sessions: dict[tuple, tuple[socket.socket, float]] = {}
        self._sock: socket.socket | None = None

    # --- TCP ---------------------------------------------------------------------
    def bind(self) -> None:
        """Bind the socket in the caller's thread, so the port is known at
        once; serving starts later on the loop (see serve)."""
        af = socket.AF_INET6 if self.family == 6 else socket.AF_INET
        host = "::" if self.family == 6 else "0.0.0.0"
        kind = socket.SOCK_STREAM if self.proto == "TCP" else socket.SOCK_DGRAM
        s = socket.socket(af, kind)
        try:
            if self.family == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.proto == "TCP":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif self.family == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.setblocking(False)
            s.bind((host, 0))
            if self.proto == "TCP":
                s.listen(1024)
        except OSError:
            s.close()
            raise
        self.port = s.getsockname()[1]
        self._sock = s

    async def serve(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.proto == "TCP":
            self._server = await asyncio.start_server(self._client, sock=self._sock)
        else:
            self._udp = self._sock
            loop.add_reader(self._udp.fileno(), self._udp_in, loop)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        tried = 0
        while tried < max(1, len(self.balancer.endpoints)):
            tried += 1
            ep = self.balancer.pick(client)
            if ep is None:
                break
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*ep),
                                                    CONNECT_TIMEOUT)
            except (TimeoutError, OSError):
                log.debug("endpoint %s:%d failed for %s", *ep, client)
                continue
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            return
        writer.close()

    # --- UDP ---------------------------------------------------------------------
    def _udp_in(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._udp is not None
        try:
            data, anc, _flags, client = self._udp.recvmsg(65535, 256)
        except (BlockingIOError, InterruptedError):
            return
        local = _pktinfo_addr(anc, self.family)
        key = (client, local)
        now = time.monotonic()
        sess = self._sessions.get(key)
        if sess is None:
            ep = self.balancer.pick(client[0])
            if ep is None:
                return
            up = socket.socket(self._udp.family, socket.SOCK_DGRAM)
            up.setblocking(False)
            try:
                up.connect(ep)
            except OSError:
                up.close()
                return
            loop.add_reader(up.fileno(), self._udp_back, up, client, local)
            sess = (up, now)
        self._sessions[key] = (sess[0], now)
        with contextlib.suppress(OSError):
            sess[0].send(data)
        self._expire(loop, now)

    def _udp_back(self, up: socket.socket, client: tuple, local: str | None) -> None:
        assert self._udp is not None
        try:
            data = up.recv(65535)
        except OSError:
            return
        anc = [] if local is None else [_pktinfo(local, self.family)]
        with contextlib.suppress(OSError):
            self._udp.sendmsg([data], anc, 0, client)

    def _expire(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        for key, (up, last) in list(self._sessions.items()):
            if now - last > UDP_IDLE:
                loop.remove_reader(up.fileno())
                up.close()
                del self._sessions[key]

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._server:
            self._server.close()
        elif self.proto == "TCP" and self._sock is not None:
            self._sock.close()  # bound but never served
        if self._udp:
            loop.remove_reader(self._udp.fileno())
            self._udp.close()
        for up, _ in self._sessions.values():
            loop.remove_reader(up.fileno())
            up.close()
        self._sessions.clear()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()


def _pktinfo_addr(anc: list, family: int) -> str | None:
    for level, kind, data in anc:
        if family == 4 and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            return socket.inet_ntop(socket.AF_INET, data[8:12])  # ipi_addr
        if family == 6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def _pktinfo(local: str, family: int) -> tuple[int, int, bytes]:
    if family == 6:
        return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                socket.inet_pton(socket.AF_INET6, local) + struct.pack("I", 0))
    addr = socket.inet_pton(socket.AF_INET, local)
    return (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("I", 0) + addr + bytes(4))


class Proxy:
    """Owns the loop thread and the listeners, keyed by any hashable id."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.listeners: dict[Hashable, Listener] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="userspace-proxy",
                                        daemon=True)
        self._thread.start()

    def ensure(self, lid: Hashable, proto: str, family: int,
               endpoints: list[tuple[str, int]], affinity: int) -> int:
        """The port of listener `lid`, created or updated; thread-safe and
        non-blocking (10,000 listeners must not cost 10,000 loop round trips)."""
        lst = self.listeners.get(lid)
        if lst is not None and (lst.proto, lst.family) == (proto, family):
            self.loop.call_soon_threadsafe(lst.balancer.update, endpoints, affinity)
            return lst.port
        if lst is not None:
            self.drop(lid)
        lst = Listener(proto, family, Balancer(endpoints, affinity))
        lst.bind()
        asyncio.run_coroutine_threadsafe(lst.serve(self.loop), self.loop)
        self.listeners[lid] = lst
        return lst.port

    def drop(self, lid: Hashable) -> None:
        lst = self.listeners.pop(lid, None)
        if lst is not None:
            self.loop.call_soon_threadsafe(lst.stop, self.loop)

    def close(self) -> None:
        for lid in list(self.listeners):
            self.drop(lid)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
