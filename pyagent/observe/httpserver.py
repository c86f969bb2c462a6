"""Bind-address parsing and a small HTTP server, shared by the health,
health-check and metrics endpoints.

The endpoints are probed by load balancers and kubelets and reachable from
pods, so no client may hold the agent's resources: one thread per server
(not per connection) multiplexes non-blocking sockets; a connection gets
`request_timeout` seconds to send its request head (counted from accept, so
a byte-at-a-time sender is cut off too) and `write_timeout` to take the
reply; at most `max_connections` are open (`per_client` from one address).
When full, the oldest connection that has not finished its request is
closed to make room: idle connections can never lock a probe out. Handlers
answer from memory, so they run inline; replies are HTTP/1.0 (one request
per connection).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

log = logging.getLogger(__name__)


def parse_bind_address(bind: str, default_port: int | None = None) -> tuple[str, int]:
    """Split "HOST:PORT" ("[v6]:PORT", ":PORT", or a bare HOST when a default
    port is given). An empty host means every IPv4 address; port 0 means any
    free port."""
    host, sep, port = bind.rpartition(":")
    if not sep or (host and ":" in host and not host.startswith("[")):
        # No port at all (bare IPv4 / hostname, or a bare IPv6 address).
        if default_port is None:
            raise ValueError(f"bind address {bind!r} needs a port")
        host, port = bind, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad port in bind address {bind!r}")
    return host, int(port)


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET  # a hostname


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256
    per_client: int = 32  # connections from one address
    request_timeout: float = 5.0  # accept -> complete request head
    write_timeout: float = 10.0  # reply start -> reply taken
    max_request: int = 16384  # bytes of request head


DEFAULT_LIMITS = Limits()


class _Conn:
    __slots__ = ("sock", "client", "listener", "buf", "out", "deadline")

    def __init__(self, sock: socket.socket, client: str, listener: _Listener,
                 deadline: float) -> None:
        self.sock, self.client, self.listener = sock, client, listener
        self.buf = bytearray()
        self.out: memoryview | None = None  # the reply, once the request is in
        self.deadline = deadline


@dataclass
class _Listener:
    sock: socket.socket
    handler: type[BaseHTTPRequestHandler]
    server_address: tuple


class Reactor:
    """One thread serving any number of listening sockets (see module doc)."""

    def __init__(self, name: str = "http", limits: Limits = DEFAULT_LIMITS) -> None:
        self.name, self.limits = name, limits
        self._sel = selectors.DefaultSelector()
        self._conns: OrderedDict[int, _Conn] = OrderedDict()  # oldest first
        self._by_client: dict[str, int] = {}
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- API (any thread) ----------------------------------------------------
    def listen(self, host: str, port: int,
               handler: type[BaseHTTPRequestHandler]) -> tuple[_Listener, Callable[[], None]]:
        """Bind host:port now (an OSError reaches the caller) and serve it;
        returns the listener (server_address: the bound address) and an
        idempotent stop that returns once the port is closed."""
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        lst = _Listener(sock, handler, sock.getsockname())
        self._call(lambda: self._sel.register(sock, selectors.EVENT_READ, lst))
        done = threading.Event()

        def stop() -> None:
            if not done.is_set():
                self._call(lambda: self._close_listener(lst), wait=True)
                done.set()
        return lst, stop

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._call(self._stopped.set)
        self._thread.join(5)

    def _call(self, fn: Callable[[], None], wait: bool = False) -> None:
        if self._stopped.is_set() or not self._thread.is_alive():
            fn()  # the loop is gone: nothing runs concurrently
            return
        ran = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                ran.set()
        with self._lock:
            self._calls.append(call)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if wait:
            ran.wait(5)

    # -- the loop ------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopped.is_set():
                now = time.monotonic()
                timeout = 1.0
                if self._conns:
                    timeout = max(0.0, min(timeout, min(
                        c.deadline for c in self._conns.values()) - now))
                for key, mask in self._sel.select(timeout):
                    self._dispatch(key, mask)
                self._expire(time.monotonic())
        except Exception:  # never silently: a dead server fails its probes
            log.exception("%s server loop failed", self.name)
        finally:
            for c in list(self._conns.values()):
                self._close(c)
            for key in list(self._sel.get_map().values()):
                if isinstance(key.data, _Listener):
                    key.data.sock.close()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        data = key.data
        if data is None:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
            with self._lock:
                calls, self._calls = self._calls, []
            for fn in calls:
                fn()
        elif isinstance(data, _Listener):
            self._accept(data)
        elif mask & selectors.EVENT_WRITE:
            self._write(data)
        else:
            self._read(data)

    def _accept(self, lst: _Listener) -> None:
        lim = self.limits
        for _ in range(64):  # a burst per wake-up, then the others get a turn
            try:
                sock, addr = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it in the backlog
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            client = addr[0]
            if self._by_client.get(client, 0) >= lim.per_client and not self._evict(client):
                sock.close()
                continue
            if len(self._conns) >= lim.max_connections and not self._evict(None):
                sock.close()
                continue
            sock.setblocking(False)
            c = _Conn(sock, client, lst, time.monotonic() + lim.request_timeout)
            self._conns[id(c)] = c
            self._by_client[client] = self._by_client.get(client, 0) + 1
            self._sel.register(sock, selectors.EVENT_READ, c)

    def _evict(self, client: str | None) -> bool:
        """Close the oldest connection (of `client`) still sending its request."""
        for c in self._conns.values():
            if c.out is None and (client is None or c.client == client):
                self._close(c, reset=True)
                return True
        return False

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)
            return
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            end = c.buf.find(b"\n\n")
        if end < 0:
            if len(c.buf) > self.limits.max_request:
                self._reply(c, _status(431, "Request Header Fields Too Large"))
            return
        self._reply(c, self._respond(c, bytes(c.buf)))

    def _respond(self, c: _Conn, raw: bytes) -> bytes:
        h = c.listener.handler.__new__(c.listener.handler)
        h.request, h.client_address, h.server = None, (c.client, 0), c.listener
        h.rfile, h.wfile = io.BytesIO(raw), io.BytesIO()
        try:
            h.handle()
        except Exception:
            log.exception("%s: handler failed", self.name)
            return _status(500, "Internal Server Error")
        return h.wfile.getvalue()

    def _reply(self, c: _Conn, data: bytes) -> None:
        c.buf = bytearray()
        c.out = memoryview(data)
        c.deadline = time.monotonic() + self.limits.write_timeout
        self._sel.modify(c.sock, selectors.EVENT_WRITE, c)
        self._write(c)

    def _write(self, c: _Conn) -> None:
        assert c.out is not None
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        c.out = c.out[n:]
        if not c.out:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_WR)
            self._close(c)

    def _expire(self, now: float) -> None:
        for c in [c for c in self._conns.values() if c.deadline <= now]:
            self._close(c, reset=True)

    def _close(self, c: _Conn, reset: bool = False) -> None:
        if self._conns.pop(id(c), None) is None:
            return
        if reset:  # RST, dropping any queued reply: nothing lingers for a stalled peer
            with contextlib.suppress(OSError):
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        n = self._by_client.get(c.client, 1) - 1
        if n:
            self._by_client[c.client] = n
        else:
            self._by_client.pop(c.client, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(c.sock)
        c.sock.close()

    def _close_listener(self, lst: _Listener) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(lst.sock)
        lst.sock.close()
        for c in [c for c in self._conns.values() if c.listener is lst]:
            self._close(c)


def _status(code: int, reason: str) -> bytes:
    return (f"HTTP/1.0 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ).encode()


def serve(
    host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str = "http",
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[_Listener, Callable[[], None]]:
    """Serve `handler` on host:port in its own thread; returns the listener
    (its `server_address` holds the bound port) and an idempotent stop."""
    reactor = Reactor(name, limits)
    try:
        lst, stop_listener = reactor.listen(host, port, handler)
    except BaseException:
        reactor.stop()
        raise

    def stop() -> None:
        stop_listener()
        reactor.stop()

    return lst, stop


class JSONHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.0 replies with a JSON body, no stderr logging."""

    def send_json(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass
