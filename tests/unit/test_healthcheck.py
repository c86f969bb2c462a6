"""Service health-check node ports over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from pyagent.observe.healthcheck import ServiceHealthServer


def free_ports(n: int) -> list[int]:
    """Ports the kernel just handed out for port 0 (then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def probe(port: int) -> tuple[int, dict[str, str], dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def server() -> Iterator[ServiceHealthServer]:
    hcs = ServiceHealthServer(addresses=["127.0.0.1"])
    yield hcs
    hcs.stop()


def test_reports_local_endpoints(server: ServiceHealthServer) -> None:
    p1, p2 = free_ports(2)
    assert server.sync({("default", "web"): (p1, 2), ("kube-system", "dns"): (p2, 0)}) == {}
    code, headers, body = probe(p1)
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == {
        "service": {"namespace": "default", "name": "web"},
        "localEndpoints": 2,
        "serviceProxyHealthy": True,
    }
    code, _, body = probe(p2)
    assert code == 503 and body["localEndpoints"] == 0


def test_incremental_sync_keeps_other_listeners(server: ServiceHealthServer) -> None:
    p1, p2, p3 = free_ports(3)
    server.sync({("ns", "a"): (p1, 1), ("ns", "b"): (p2, 1)})
    listener_a = server._stops[p1]
    server.sync({("ns", "a"): (p1, 0), ("ns", "c"): (p3, 4)})
    assert server.ports() == {p1: ("ns", "a"), p3: ("ns", "c")}
    assert server._stops[p1] is listener_a  # not restarted, only the count changed
    assert refused(p2)
    assert probe(p3)[0] == 200
    assert probe(p1)[2]["localEndpoints"] == 0


def test_port_change_moves_listener(server: ServiceHealthServer) -> None:
    p1, p2 = free_ports(2)
    server.sync({("ns", "a"): (p1, 1)})
    server.sync({("ns", "a"): (p2, 1)})
    assert refused(p1)
    assert probe(p2)[0] == 200


def test_proxy_unhealthy_gives_503() -> None:
    healthy = [True]
    hcs = ServiceHealthServer(addresses=["127.0.0.1"], proxy_healthy=lambda: healthy[0])
    try:
        (p,) = free_ports(1)
        hcs.sync({("ns", "a"): (p, 3)})
        assert probe(p)[0] == 200
        healthy[0] = False
        code, _, body = probe(p)
        assert code == 503 and body["serviceProxyHealthy"] is False
    finally:
        hcs.stop()


def test_bind_failures_are_reported_and_retried(server: ServiceHealthServer) -> None:
    p1, p2 = free_ports(2)
    busy = socket.socket()
    busy.bind(("127.0.0.1", p2))
    busy.listen()
    errors = server.sync({("ns", "a"): (p1, 1), ("ns", "b"): (p2, 1), ("ns", "c"): (0, 1)})
    assert set(errors) == {("ns", "b"), ("ns", "c")}
    assert probe(p1)[0] == 200  # one bad port does not stop the others
    busy.close()
    assert server.sync({("ns", "a"): (p1, 1), ("ns", "b"): (p2, 1)}) == {}
    assert probe(p2)[0] == 200


def test_duplicate_port_is_an_error(server: ServiceHealthServer) -> None:
    (p,) = free_ports(1)
    errors = server.sync({("ns", "a"): (p, 1), ("ns", "b"): (p, 1)})
    assert list(errors) == [("ns", "b")]
    assert probe(p)[2]["service"]["name"] == "a"


def test_stop_closes_everything() -> None:
    hcs = ServiceHealthServer(addresses=["127.0.0.1"])
    (p,) = free_ports(1)
    hcs.sync({("ns", "a"): (p, 1)})
    hcs.stop()
    assert refused(p)
    assert hcs.ports() == {}
