"""Bind-address parsing and a background HTTP server, shared by the health,
health-check and metrics endpoints."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True


def serve(
    host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str = "http"
) -> tuple[QuietServer, Callable[[], None]]:
    """Serve `handler` on host:port in a daemon thread; returns the server
    (its `server_address` holds the bound port) and an idempotent stop."""
    server_cls = type("Server", (QuietServer,), {"address_family": _family(host)})
    server = server_cls((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        # Shutting the listening socket down wakes serve_forever's select at
        # once instead of after its poll interval (Linux).
        with contextlib.suppress(OSError):
            server.socket.shutdown(socket.SHUT_RDWR)
        server.shutdown()
        server.server_close()
        thread.join(5)

    return server, stop


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
