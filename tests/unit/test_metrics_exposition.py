"""/metrics renders the large scrape-time families itself (speed); the
bytes must be exactly what prometheus_client renders, in both formats."""

from __future__ import annotations

import urllib.request

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from pyagent.observe.metrics import Metrics, start_metrics_server

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def stable(body: bytes) -> bytes:
    """body without process_* samples: live readings (CPU time, memory) that
    differ between two renderings however fast they follow each other."""
    return b"\n".join(ln for ln in body.split(b"\n") if not ln.startswith(b"process_"))


def metrics() -> Metrics:
    m = Metrics()
    m.synced(0.25, 1000.0)
    m.set_refused({("map_full", "lb4_revnat"): 3})
    m.set_sources(
        map_pressure=lambda: {"lb4_services": 0.5, "lb4_revnat": 1.0, "lb6_revnat": 1 / 3},
        service_connections=lambda: {'ns/we"ird\\name:p\n': 12345678901.0, "a/b:http": 0},
        backend_connections=lambda: {"10.0.0.1:80": 3, "[fd00::1]:53": 1e21})
    return m


def test_exposition_is_byte_identical_to_prometheus_client() -> None:
    m = metrics()
    assert stable(m.exposition("")[0]) == stable(generate_latest(m.registry))
    body, ctype = m.exposition(OPENMETRICS)
    assert ctype.startswith("application/openmetrics-text")
    assert stable(body) == stable(generate_openmetrics(m.registry))


def test_a_failing_source_drops_only_its_family() -> None:
    m = metrics()

    def broken() -> dict:
        raise RuntimeError("map gone")
    m.set_sources(backend_connections=broken)
    assert stable(m.exposition("")[0]) == stable(generate_latest(m.registry))
    assert b'pyagent_service_new_connections_total{namespace="a",port="http",service="b"} 0.0' \
        in m.exposition("")[0]


def test_server_serves_the_fast_exposition() -> None:
    m = metrics()
    _, port, stop = start_metrics_server("127.0.0.1:0", m)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert stable(body) == stable(generate_latest(m.registry))
        assert b'pyagent_services_refused{map="lb4_revnat",reason="map_full"} 3.0' in body
    finally:
        stop()
