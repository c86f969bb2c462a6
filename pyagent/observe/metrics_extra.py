"""The metrics kube-proxy has beyond the sync basics, and what a scraper of
any Python service expects: process_* (CPU, memory, fds, start time), a
build-info gauge, full vs partial sync histograms, Services with a Local
traffic policy and no local endpoints, and the API client's requests
(rest_client_*, as client-go names them).

Created by Metrics (one per registry); Observability feeds it each sync,
and the API client's requests arrive through request() (node/wiring.py
hands it to sources/kube_client.instrument).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.observe.status_report import agent_version

# kube-proxy: ExponentialBuckets(0.001, 2, 15), as the sync histogram
SYNC_BUCKETS = [0.001 * 2**i for i in range(15)]
# client-go's rest_client_request_duration_seconds buckets
REST_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0]


class ExtraMetrics:
    def __init__(self, registry: CollectorRegistry, mode: str = "") -> None:
        r = registry
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "pyagent_build_info", "pyagent's version and runtime; the value is always 1",
            ["version", "python_version", "mode"], registry=r)
        self.build_info.labels(agent_version(), platform.python_version(), mode).set(1)
        self.full_sync = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs", buckets=SYNC_BUCKETS,
            registry=r)
        self.partial_sync = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs", buckets=SYNC_BUCKETS,
            registry=r)
        self.no_local_endpoints = _NoLocalEndpoints()
        r.register(self.no_local_endpoints)
        self.rest_requests = Counter(
            "rest_client_requests", "Number of HTTP requests to the API server, "
            "partitioned by status code, method, and host", ["code", "method", "host"],
            registry=r)
        self.rest_duration = Histogram(
            "rest_client_request_duration_seconds", "Request latency in seconds (until "
            "the response headers), by verb and host", ["verb", "host"],
            buckets=REST_BUCKETS, registry=r)
        # (policy, service port key) of every service port lacking local endpoints
        self._no_local: dict[ServiceKey, set[str]] = {}

    def synced(self, duration: float, full: bool,
               states: Mapping[ServiceKey, tuple[ServicePortState, ...]]) -> None:
        """One sync of `states` (a full one: of every Service) took duration."""
        (self.full_sync if full else self.partial_sync).observe(duration)
        if full:
            self._no_local.clear()
        for key, ports in states.items():
            missing: set[str] = set()
            for sps in ports:
                sp = sps.service
                if not sps.has_any_endpoints or any(e.is_local for e in sps.all_endpoints):
                    continue
                if sp.internal_policy_local:
                    missing.add(f"internal|{sp.port_name}|{sp.family}")
                if sp.external_policy_local and sp.externally_accessible:
                    missing.add(f"external|{sp.port_name}|{sp.family}")
            if missing:
                self._no_local[key] = missing
            else:
                self._no_local.pop(key, None)
        for policy in ("internal", "external"):
            n = sum(1 for m in self._no_local.values() for k in m if k.startswith(policy))
            self.no_local_endpoints.counts[policy] = n

    def request(self, method: str, host: str, code: str, seconds: float) -> None:
        self.rest_requests.labels(code, method, host).inc()
        self.rest_duration.labels(method, host).observe(seconds)



class _NoLocalEndpoints(Collector):
    """kube-proxy's gauge kubeproxy_sync_proxy_rules_no_local_endpoints_total,
    exposed untyped: the name must stay for kube-proxy's dashboards and
    alerts, and promtool's lint rejects a `_total` gauge but not an untyped
    series (which Prometheus stores and queries as a gauge)."""

    def __init__(self) -> None:
        self.counts = {"internal": 0, "external": 0}

    def collect(self) -> Iterator[Metric]:
        m = UnknownMetricFamily("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                                "Number of services with a Local traffic policy and no "
                                "endpoints", labels=["traffic_policy"])
        for policy, n in self.counts.items():
            m.add_metric([policy], n)
        yield m
