"""Prometheus metrics: kube-proxy's names, plus pyagent's BPF map pressure
and per-service / per-backend connection counters.

Every Metrics instance owns its CollectorRegistry, so tests can build several.
The BPF-derived families are read at scrape time from callables that the
dataplane provides (per-CPU counters summed on read); a failing callable only
drops its own family from that scrape.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from pyagent.core.sink import KINDS
from pyagent.observe.httpserver import (
    DEFAULT_LIMITS,
    JSONHandler,
    Limits,
    parse_bind_address,
    serve,
)

log = logging.getLogger(__name__)
# No <counter>_created / <histogram>_created series: one more series per
# counter that no kube-proxy dashboard reads.
disable_created_metrics()

DEFAULT_BIND = "127.0.0.1:10249"
REFUSAL_REASONS = ("map_full", "frontend_conflict", "too_many_backends", "error")


def _linear(start: float, width: float, count: int) -> list[float]:
    return [start + i * width for i in range(count)]


# kube-proxy: ExponentialBuckets(0.001, 2, 15)
SYNC_BUCKETS = [0.001 * 2**i for i in range(15)]
# kube-proxy: 0.25s steps to 0.5s, 1s steps to 59s, 5s steps to 115s, 30s steps to 300s
NETWORK_PROGRAMMING_BUCKETS = (
    _linear(0.25, 0.25, 2) + _linear(1, 1, 59) + _linear(60, 5, 12) + _linear(120, 30, 7)
)

SERVICE_LABELS = ("namespace", "service", "port")


def split_service(name: str) -> list[str]:
    """"ns/name:port" -> [ns, name, port] (the labels of SERVICE_LABELS)."""
    ns, _, rest = name.partition("/")
    svc, _, port = rest.rpartition(":")
    return [ns, svc, port] if svc else [ns, rest, ""]


# Each returns {label value: number}, read at scrape time.
ValuesFn = Callable[[], Mapping[str, float]]


class _ScrapeTimeCollector:
    """Families whose values come from callables at scrape time."""

    def __init__(self) -> None:
        self.map_pressure: ValuesFn | None = None
        self.service_connections: ValuesFn | None = None
        self.backend_connections: ValuesFn | None = None
        self.north_south_packets: ValuesFn | None = None

    def _families(self) -> list[tuple[str, type, str, tuple[str, ...], ValuesFn | None]]:
        return [
            (
                "pyagent_bpf_map_pressure",
                GaugeMetricFamily,
                "Fill level of a BPF map (entries / max entries); >= 1.0 means full.",
                ("map_name",),
                self.map_pressure,
            ),
            (
                "pyagent_service_new_connections",
                CounterMetricFamily,
                "New connections load-balanced to a service port.",
                SERVICE_LABELS,
                self.service_connections,
            ),
            (
                "pyagent_backend_new_connections",
                CounterMetricFamily,
                "New connections sent to a backend address (of any Service; opt-in: "
                "--metrics-per-backend).",
                ("backend",),
                self.backend_connections,
            ),
            (
                "pyagent_north_south_packets",
                CounterMetricFamily,
                "Packets the TC and XDP programs handled, by verdict (xdp_done: "
                "finished at XDP, xdp_to_tc: handed to TC untouched).",
                ("verdict",),
                self.north_south_packets,
            ),
        ]

    def describe(self) -> Iterator[Metric]:
        for name, family, doc, labels, _ in self._families():
            yield family(name, doc, labels=list(labels))

    def render(self, openmetrics: bool) -> bytes:
        """The same families as collect() in exposition text, written
        directly: with 65k Services and 130k backends, prometheus_client's
        per-sample formatting was most of a scrape. Byte-identical to
        prometheus_client's output (tests/unit/test_health_metrics.py)."""
        out: list[str] = []
        for name, family, doc, labels, fn in self._families():
            counter = family is CounterMetricFamily
            sample = f"{name}_total" if counter else name
            head = name if openmetrics or not counter else sample
            kind = "counter" if counter else "gauge"
            try:
                values = dict(fn()) if fn is not None else {}
            except Exception:  # as collect(): the family is left out
                log.exception("metrics: reading %s failed", name)
                continue
            out.append(f"# HELP {head} {_escape_doc(doc, openmetrics)}\n# TYPE {head} {kind}\n")
            if labels == SERVICE_LABELS:  # one key, several labels
                out.extend(f"{sample}{{{_label_set(labels, split_service(k))}}} "
                           f"{_go_float(v)}\n" for k, v in sorted(values.items()))
                continue
            prefix = f"{sample}{{{labels[0]}=\""
            out.extend(f"{prefix}{_escape_label(k)}\"}} {_go_float(v)}\n"
                       for k, v in sorted(values.items()))
        return "".join(out).encode()

    def collect(self) -> Iterator[Metric]:
        for name, family, doc, labels, fn in self._families():
            metric = family(name, doc, labels=list(labels))
            if fn is not None:
                try:
                    values = dict(fn())
                except Exception:
                    log.exception("metrics: reading %s failed", name)
                    continue
                for key, value in sorted(values.items()):
                    metric.add_metric(split_service(key) if labels == SERVICE_LABELS else [key],
                                      float(value))
            yield metric


def _escape_doc(doc: str, openmetrics: bool) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return doc.replace('"', r'\"') if openmetrics else doc


@functools.lru_cache(maxsize=8192)
def _go_float(value: float) -> str:
    return floatToGoString(value)  # counters repeat (most are 0): cached


def _label_set(names: tuple[str, ...], values: list[str]) -> str:
    """As prometheus_client writes them: sorted by label name."""
    return ",".join(f'{n}="{_escape_label(v)}"'
                    for n, v in sorted(zip(names, values, strict=True)))


def _escape_label(value: str) -> str:
    if '"' not in value and "\\" not in value and "\n" not in value:
        return value
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class _Proxy:
    """Exposes one registry's collectors inside another."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return self._registry.collect()

    def describe(self) -> Iterator[Metric]:
        return self._registry.collect()


class Metrics:
    """All pyagent metrics, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, mode: str = "") -> None:
        from pyagent.observe.metrics_extra import ExtraMetrics

        self.registry = registry if registry is not None else CollectorRegistry()
        self._totals = [0, 0]  # service / endpoint changes counted so far
        # Everything but the scrape-time families, which exposition() renders itself.
        self._core = CollectorRegistry()
        r = self._core
        self.extra = ExtraMetrics(r, mode)
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.last_sync_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            registry=r,
        )
        self.last_queued_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            registry=r,
        )
        self.network_programming_duration = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            buckets=NETWORK_PROGRAMMING_BUCKETS,
            registry=r,
        )
        self.service_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            registry=r,
        )
        self.endpoint_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            registry=r,
        )
        # prometheus_client appends the _total suffix to counters.
        self.service_changes_total = Counter(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            registry=r,
        )
        self.endpoint_changes_total = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            registry=r,
        )
        self.sync_errors_total = Counter(
            "pyagent_sync_errors",
            "Datapath syncs that failed",
            registry=r,
        )
        self.object_errors = Gauge(
            "pyagent_object_errors",
            "Objects currently rejected (invalid or not programmable), per kind",
            ["kind"],
            registry=r,
        )
        for kind in KINDS:  # export zeros rather than absent series
            self.object_errors.labels(kind).set(0)
        self.source_errors = Gauge(
            "pyagent_source_errors",
            "Problems of the source's last read that it could not apply (manifests: files "
            "unreadable, unparsable or over a parse limit, serving their last good objects, "
            "and documents that are not usable objects); alert when > 0",
            registry=r,
        )
        self.services_refused = Gauge(
            "pyagent_services_refused",
            "Services the dataplane currently refuses (they keep their last good state), "
            "per reason (map_full: the map named by `map` or its id space is full; "
            "frontend_conflict, too_many_backends, error)",
            ["reason", "map"],
            registry=r,
        )
        self.set_refused({})
        self._scrape = _ScrapeTimeCollector()
        self.registry.register(_Proxy(self._core))
        self.registry.register(self._scrape)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(/metrics body, content type) for an Accept header: what
        prometheus_client would render from `registry`, faster."""
        from pyagent.core.gc_pause import gc_paused

        encoder, content_type = choose_encoder(accept)
        core = encoder(self._core)
        openmetrics = content_type.startswith("application/openmetrics-text")
        # A scrape makes a few short-lived objects per Service and backend; with
        # the agent's large heap each cyclic collection they trigger costs more
        # than the whole scrape (reference counting frees them anyway).
        with gc_paused():
            scraped = self._scrape.render(openmetrics)
        if openmetrics:
            eof = b"# EOF\n"
            return core.removesuffix(eof) + scraped + eof, content_type
        return core + scraped, content_type

    def set_sources(
        self,
        map_pressure: ValuesFn | None = None,
        service_connections: ValuesFn | None = None,
        backend_connections: ValuesFn | None = None,
        north_south_packets: ValuesFn | None = None,
    ) -> None:
        """Install the scrape-time callables; None leaves a source unchanged."""
        if map_pressure is not None:
            self._scrape.map_pressure = map_pressure
        if service_connections is not None:
            self._scrape.service_connections = service_connections
        if backend_connections is not None:
            self._scrape.backend_connections = backend_connections
        if north_south_packets is not None:
            self._scrape.north_south_packets = north_south_packets

    def set_refused(self, counts: Mapping[tuple[str, str], int]) -> None:
        """{(reason, map): Services}; the base reasons are exported as zeros."""
        self.services_refused.clear()
        for reason in REFUSAL_REASONS:
            self.services_refused.labels(reason, "").set(0)
        for (reason, map_name), n in counts.items():
            self.services_refused.labels(reason, map_name).set(n)

    def set_totals(self, services: int, endpoints: int) -> None:
        """The changes applied since start (the counters only ever grow)."""
        for counter, value, last in ((self.service_changes_total, services, 0),
                                     (self.endpoint_changes_total, endpoints, 1)):
            if value > self._totals[last]:
                counter.inc(value - self._totals[last])
                self._totals[last] = value

    def queued(self, timestamp: float) -> None:
        """A change was queued for the datapath (wall-clock seconds)."""
        self.last_queued_timestamp.set(timestamp)

    def synced(self, duration: float, timestamp: float, ok: bool = True) -> None:
        """Record one sync: its duration, and its end time if it succeeded."""
        self.sync_duration.observe(duration)
        if ok:
            self.last_sync_timestamp.set(timestamp)
        else:
            self.sync_errors_total.inc()


def start_metrics_server(
    bind: str, registry: CollectorRegistry | Metrics, proxy_mode: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[str, int, Callable[[], None]]:
    """Serve /metrics (plus kube-proxy's /healthz "ok" and /proxyMode);
    returns (host, bound port, stop). Port 0 binds any free port."""
    host, port = parse_bind_address(bind, default_port=10249)

    class Handler(JSONHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                accept = self.headers.get("Accept", "")
                if isinstance(registry, Metrics):
                    body, content_type = registry.exposition(accept)
                else:
                    encoder, content_type = choose_encoder(accept)
                    body = encoder(registry)
                self._send(200, content_type, body)
            elif path in ("/healthz", "/livez"):
                self._send(200, "text/plain; charset=utf-8", b"ok")
            elif path == "/proxyMode" and proxy_mode:
                self._send(200, "text/plain; charset=utf-8", proxy_mode.encode())
            else:
                self.send_json(404, json.dumps({"error": "not found"}))

        def _send(self, code: int, content_type: str, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server, stop = serve(host, port, Handler, name="metrics", limits=limits)
    return host, server.server_address[1], stop
