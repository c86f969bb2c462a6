"""Wires the agent's sync reports to /healthz, Prometheus metrics, the
per-service health-check node ports (externalTrafficPolicy Local) and the
status file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, StatsReader
from pyagent.observe.health import HealthState, start_health_server
from pyagent.observe.healthcheck import ServiceHealthServer
from pyagent.observe.metrics import Metrics, start_metrics_server
from pyagent.observe.report import SyncReport
from pyagent.observe.status_report import Connectivity

log = logging.getLogger(__name__)


class Described(Protocol):
    """What observers may ask of the dataplane (pyagent.dataplanes.base)."""

    def describe(self) -> Description: ...

    def counters(self) -> StatsReader | None: ...


class Observability:
    """A SyncObserver: everything it shows comes from the agent's SyncReports
    and the dataplane's describe() / counters()."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.health = HealthState(timeout=2 * config.sync_period)
        self.metrics = Metrics(mode=config.mode)
        self.hc = ServiceHealthServer(_hc_addresses(config))
        self._stops: list[Callable[[], None]] = []
        self._dataplane: Described | None = None
        self._hc: dict[tuple[str, str], tuple[int, int]] = {}
        self.healthz_port = self.metrics_port = 0
        self._connectivity: Connectivity | None = None
        self.last_event: float | None = None

    def set_source(self, connectivity: Connectivity) -> None:
        """How the status file learns whether the source answers."""
        self._connectivity = connectivity

    def attach(self, dataplane: Described) -> None:
        self._dataplane = dataplane

        def reader(name: str) -> Callable[[], dict]:
            # The dataplane makes its counters in setup(), after attach().
            def read() -> dict:
                stats = dataplane.counters()
                return getattr(stats, name)() if stats is not None else {}
            return read

        self.metrics.set_sources(map_pressure=reader("map_pressure"),
                                 service_connections=reader("service_connections"),
                                 north_south_packets=reader("north_south_packets"),
                                 # opt-in: its series grow with the cluster
                                 backend_connections=reader("backend_connections")
                                 if self.config.metrics_per_backend else None)

    def start(self) -> None:
        # An empty address turns a server off (kube-proxy's --metrics-port=0).
        if self.config.healthz_bind_address:
            _, self.healthz_port, stop = start_health_server(self.config.healthz_bind_address,
                                                              self.health)
            self._stops.append(stop)
        if self.config.metrics_bind_address:
            _, self.metrics_port, stop = start_metrics_server(
                self.config.metrics_bind_address, self.metrics, self.config.mode)
            self._stops.append(stop)
        log.info("healthz on port %d, metrics on port %d", self.healthz_port, self.metrics_port)

    def stop(self) -> None:
        for stop in self._stops:
            stop()
        self.hc.stop()

    # -- agent events -------------------------------------------------------
    def on_queued(self) -> None:
        self.last_event = time.time()
        self.health.queued_update()
        self.metrics.queued(time.time())

    def on_sync_failed(self) -> None:
        self.metrics.synced(0.0, time.time(), ok=False)

    def on_synced(self, report: SyncReport) -> None:
        self.health.updated()
        self.metrics.synced(report.duration, report.finished)
        self.metrics.extra.synced(report.duration, report.full, report.states)
        for stamp in report.trigger_times:  # kube-proxy's network programming latency
            self.metrics.network_programming_duration.observe(
                max(0.0, report.finished - stamp))
        svc_pending, ep_pending = report.pending
        self.metrics.service_changes_pending.set(svc_pending)
        self.metrics.endpoint_changes_pending.set(ep_pending)
        self.metrics.set_totals(*report.totals)
        for kind in ("Service", "EndpointSlice", "Node"):
            self.metrics.object_errors.labels(kind).set(report.object_error_counts.get(kind, 0))
        self.metrics.source_errors.set(len(report.source_problems))
        counts: dict[tuple[str, str], int] = {}
        for r in report.refused:
            counts[(r.reason, r.map)] = counts.get((r.reason, r.map), 0) + 1
        self.metrics.set_refused(counts)
        if report.node:
            self.health.sync_node(dict(report.node))
        self._sync_health_checks(report.states, report.full)
        self._write_status(report)

    def _write_status(self, report: SyncReport) -> None:
        """For `pyagent status` / `services list`: frontends by name."""
        from pyagent.observe import status_report, statusfile

        described = self._dataplane.describe() if self._dataplane is not None else None
        statusfile.write(self.config.bpffs, {
            "pid": os.getpid(), "mode": self.config.mode, "nodeName": self.config.node_name,
            "cgroup": described.cgroup if described else "", "bpffs": self.config.bpffs,
            "interfaces": list(self.config.interfaces), "lastSync": report.finished,
            "lastSyncSeconds": report.duration, "healthzPort": self.healthz_port,
            "metricsPort": self.metrics_port, "errors": {
                "/".join(k): v for k, v in report.errors.items()},
            "objectErrors": list(report.object_errors),
            "sourceErrors": list(report.source_problems),
            "refused": [r.to_json() for r in report.refused],
            "frontends": [fe.to_json() for fe in described.frontends] if described else [],
            "xdp": dict(described.xdp) if described else {},
            **status_report.fields(self.config, self._connectivity, self.last_event,
                                   self.healthz_port, self.metrics_port)})

    def _sync_health_checks(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
                            full: bool) -> None:
        """Only the Services of this sync are looked at (O(change), not O(cluster))."""
        if full:
            self._hc.clear()
        for key, ports in states.items():
            self._hc.pop(key, None)
            for sps in ports:
                if sps.service.health_check_node_port:
                    _, count = self._hc.get(key, (0, 0))
                    self._hc[key] = (sps.service.health_check_node_port,
                                     max(count, sps.local_ready_count))
        for svc, err in self.hc.sync(dict(self._hc)).items():
            log.error("health check node port of %s/%s: %s", *svc, err)


def _hc_addresses(config: NodeConfig) -> list[str]:
    # kube-proxy serves health-check node ports on the node port addresses.
    return list(config.node_port_ips(4) + config.node_port_ips(6)) or ["0.0.0.0"]
