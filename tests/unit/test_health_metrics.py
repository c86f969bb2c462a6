"""/healthz, /livez and /metrics over real HTTP on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from pyagent.observe.health import HealthState, go_time, start_health_server
from pyagent.observe.httpserver import parse_bind_address
from pyagent.observe.metrics import Metrics, start_metrics_server


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class FakeTime:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def health() -> Iterator[tuple[HealthState, FakeTime, str]]:
    clock = FakeTime()
    state = HealthState(timeout=60.0, clock=clock)
    host, port, stop = start_health_server("127.0.0.1:0", state)
    assert host == "127.0.0.1" and port != 0
    yield state, clock, f"http://127.0.0.1:{port}"
    stop()
    stop()  # idempotent


def test_healthz_healthy_before_first_sync(health) -> None:
    state, clock, url = health
    code, headers, body = get(url + "/healthz")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc == {
        "lastUpdated": go_time(clock.t),
        "currentTime": go_time(clock.t),
        "nodeEligible": True,
    }


def test_healthz_flips_when_queued_update_is_late_and_recovers(health) -> None:
    state, clock, url = health
    state.updated()
    applied = clock.t
    clock.t += 10
    state.queued_update()
    clock.t += 59.9
    state.queued_update()  # the oldest queued time counts, not the newest
    assert get(url + "/healthz")[0] == 200
    clock.t += 0.1
    code, _, body = get(url + "/healthz")
    assert code == 503
    doc = json.loads(body)
    assert doc["lastUpdated"] == go_time(applied)
    assert doc["currentTime"] == go_time(clock.t)
    assert get(url + "/livez")[0] == 503
    state.updated()
    assert get(url + "/healthz")[0] == 200
    assert get(url + "/livez")[0] == 200


def test_never_synced_proxier_becomes_unhealthy_after_timeout(health) -> None:
    state, clock, url = health
    state.queued_update()
    clock.t += 61
    assert get(url + "/healthz")[0] == 503


def test_any_late_family_is_unhealthy(health) -> None:
    state, clock, url = health
    state.updated("IPv4")
    state.updated("IPv6")
    state.queued_update("IPv6")
    clock.t += 120
    assert get(url + "/healthz")[0] == 503
    state.updated("IPv6")
    assert get(url + "/healthz")[0] == 200


def test_node_eligibility_affects_healthz_not_livez(health) -> None:
    state, clock, url = health
    state.sync_node(
        {
            "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
        }
    )
    code, _, body = get(url + "/healthz")
    assert code == 503 and json.loads(body)["nodeEligible"] is False
    code, _, body = get(url + "/livez")
    assert code == 200 and "nodeEligible" not in json.loads(body)
    state.sync_node({"metadata": {"name": "n1", "deletionTimestamp": "2024-01-01T00:00:00Z"}})
    assert get(url + "/healthz")[0] == 503
    state.sync_node({"metadata": {"name": "n1"}})
    assert get(url + "/healthz")[0] == 200


def test_unknown_path_is_404(health) -> None:
    assert get(health[2] + "/nope")[0] == 404


def test_go_time_format() -> None:
    assert go_time(0.5) == "1970-01-01 00:00:00.5 +0000 UTC"
    assert go_time(86400) == "1970-01-02 00:00:00 +0000 UTC"
    assert go_time(None) == "0001-01-01 00:00:00 +0000 UTC"


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("0.0.0.0:10256", ("0.0.0.0", 10256)),
        (":0", ("0.0.0.0", 0)),
        ("[::1]:9", ("::1", 9)),
        ("127.0.0.1", ("127.0.0.1", 10256)),
        ("::", ("::", 10256)),
    ],
)
def test_parse_bind_address(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind_address(bind, default_port=10256) == expected


@pytest.mark.parametrize("bind", ["127.0.0.1:x", "1.2.3.4:70000"])
def test_parse_bind_address_rejects(bind: str) -> None:
    with pytest.raises(ValueError):
        parse_bind_address(bind, default_port=1)


EXPECTED_METRICS = [
    "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_proxy_rules_duration_seconds_count",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_network_programming_duration_seconds_bucket",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    'pyagent_bpf_map_pressure{map_name="services"}',
    'pyagent_service_new_connections_total{namespace="default",port="http",service="web"}',
    'pyagent_backend_new_connections_total{backend="10.0.0.1:8080/TCP"}',
    'pyagent_north_south_packets_total{verdict="xdp_done"}',
    "pyagent_sync_errors_total",
    'pyagent_object_errors{kind="Service"}',
]


def scrape(port: int) -> dict[str, float]:
    code, headers, body = get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_scrape_shows_every_metric() -> None:
    metrics = Metrics()
    metrics.synced(0.02, 1_700_000_000.0)
    metrics.synced(0.5, 1_700_000_001.0, ok=False)
    metrics.queued(1_700_000_002.0)
    metrics.network_programming_duration.observe(1.5)
    metrics.service_changes_pending.set(3)
    metrics.endpoint_changes_total.inc(7)
    metrics.object_errors.labels("Service").set(2)
    metrics.set_sources(
        map_pressure=lambda: {"services": 0.25, "backends": 1.0},
        service_connections=lambda: {"default/web:http": 12},
        backend_connections=lambda: {"10.0.0.1:8080/TCP": 5},
        north_south_packets=lambda: {"xdp_done": 40, "new": 2},
    )
    host, port, stop = start_metrics_server("127.0.0.1:0", metrics.registry, proxy_mode="ebpf")
    try:
        samples = scrape(port)
        for name in EXPECTED_METRICS:
            assert any(s.startswith(name) for s in samples), name
        assert samples["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] == 1_700_000_000.0
        assert samples["kubeproxy_sync_proxy_rules_duration_seconds_count"] == 2
        assert samples["pyagent_sync_errors_total"] == 1
        assert samples['pyagent_bpf_map_pressure{map_name="backends"}'] == 1.0
        assert samples["pyagent_service_new_connections_total"
                       '{namespace="default",port="http",service="web"}'] == 12
        assert samples['pyagent_object_errors{kind="Service"}'] == 2
        assert samples['pyagent_object_errors{kind="Node"}'] == 0
        assert samples['pyagent_north_south_packets_total{verdict="xdp_done"}'] == 40
        assert get(f"http://127.0.0.1:{port}/proxyMode")[2] == b"ebpf"
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        stop()


def test_scrape_time_values_are_read_on_each_scrape_and_failures_contained() -> None:
    metrics = Metrics()
    counts = {"a/b:p": 1}

    def broken() -> dict[str, float]:
        raise OSError("map gone")

    metrics.set_sources(service_connections=lambda: counts, map_pressure=broken)
    _, port, stop = start_metrics_server("127.0.0.1:0", metrics.registry)
    try:
        svc = 'pyagent_service_new_connections_total{namespace="a",port="p",service="b"}'
        assert scrape(port)[svc] == 1
        counts["a/b:p"] = 9
        samples = scrape(port)
        assert samples[svc] == 9
        assert not any(s.startswith("pyagent_bpf_map_pressure") for s in samples)
    finally:
        stop()


def test_metrics_instances_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.sync_errors_total.inc()
    assert b.registry.get_sample_value("pyagent_sync_errors_total") == 0
    assert a.registry.get_sample_value("pyagent_sync_errors_total") == 1
