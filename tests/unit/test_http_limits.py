"""The health, health-check and metrics servers under idle, slow and
flooding clients: no thread per connection, request and write timeouts, a
connection cap that never locks a probe out."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pyagent.observe.health import HealthState, start_health_server
from pyagent.observe.healthcheck import ServiceHealthServer
from pyagent.observe.httpserver import DEFAULT_LIMITS, JSONHandler, Limits, serve

from .test_healthcheck import free_ports


def get(port: int, path: str = "/healthz", timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), None if it stayed open."""
    sock.settimeout(0.2)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


@pytest.fixture
def health() -> Iterator[int]:
    _, port, stop = start_health_server("127.0.0.1:0", HealthState(timeout=60))
    yield port
    stop()


def idle(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        out.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return out


def test_healthz_answers_while_1000_idle_connections_are_open(health: int) -> None:
    threads = threading.active_count()
    conns = idle(health, 1000)
    try:
        for _ in range(5):
            assert get(health)[0] == 200
        assert threading.active_count() == threads  # no thread per connection
    finally:
        for s in conns:
            s.close()


def test_400_idle_connections_hold_no_threads(health: int) -> None:
    threads = threading.active_count()
    conns = idle(health, 400)
    try:
        time.sleep(0.3)  # let the server accept them all
        assert threading.active_count() == threads
        assert get(health)[0] == 200
    finally:
        for s in conns:
            s.close()


def test_half_sent_request_is_closed_at_the_request_timeout() -> None:
    assert DEFAULT_LIMITS.request_timeout <= 10  # the default is finite and short
    _, port, stop = start_health_server("127.0.0.1:0", HealthState(),
                                        Limits(request_timeout=1.0))
    try:
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        drip = socket.create_connection(("127.0.0.1", port))
        stop_drip = threading.Event()

        def dripping() -> None:  # a byte every 100 ms does not extend the deadline
            for b in b"GET /healthz HTTP/1.1\r\nHost: slowloris-header-" * 10:
                if stop_drip.wait(0.1):
                    return
                try:
                    drip.send(bytes([b]))
                except OSError:
                    return
        t = threading.Thread(target=dripping, daemon=True)
        t.start()
        assert (closed_within(half, 5) or 99) < 3
        assert (closed_within(drip, 5) or 99) < 3
        stop_drip.set()
        assert get(port)[0] == 200
    finally:
        stop()


def test_full_server_evicts_the_oldest_idle_connection_not_the_probe() -> None:
    _, port, stop = start_health_server("127.0.0.1:0", HealthState(),
                                        Limits(max_connections=20, per_client=10))
    try:
        conns = idle(port, 30)
        time.sleep(0.3)
        # one address holds at most per_client: the oldest went first
        assert closed_within(conns[0], 2) is not None
        assert closed_within(conns[-1], 0.5) is None
        assert get(port)[0] == 200
        for s in conns:
            s.close()
    finally:
        stop()


def test_a_client_that_does_not_read_cannot_block_the_server() -> None:
    big = b"x" * (32 << 20)  # far more than the socket buffers hold

    class Big(JSONHandler):
        def do_GET(self) -> None:
            if self.path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(len(big)))
                self.end_headers()
                self.wfile.write(big)
            else:
                self.send_json(200, "{}")

    lst, stop = serve("127.0.0.1", 0, Big, limits=Limits(write_timeout=1.0))
    port = lst.server_address[1]
    try:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        time.sleep(0.2)
        assert get(port, "/small")[0] == 200  # served while the slow reader stalls
        time.sleep(1.5)  # past the write timeout: the server closed its end
        received, eof = 0, False
        slow.settimeout(1)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                chunk = slow.recv(1 << 20)
                if not chunk:
                    eof = True
                    break
                received += len(chunk)
        except (TimeoutError, ConnectionResetError):
            eof = True
        print("slow reader got", received, "bytes, eof", eof)
        assert eof and received < len(big)  # cut off at the write timeout
    finally:
        stop()


def test_health_check_ports_share_one_thread() -> None:
    hc = ServiceHealthServer(["127.0.0.1"])
    threads = threading.active_count()
    try:
        # free_ports holds all twenty at once: a port closed at once can be
        # handed out again, and two Services would then share it.
        ports = {("ns", f"s{i}"): (p, 1) for i, p in enumerate(free_ports(20))}
        assert hc.sync(ports) == {}
        assert threading.active_count() == threads + 1
        for port, _ in ports.values():
            assert get(port, "/")[0] == 200
        hc.sync({})
        for port, _ in list(ports.values())[:3]:
            with pytest.raises(OSError):
                get(port, "/", timeout=1)
    finally:
        hc.stop()
    assert threading.active_count() == threads
