"""Wires the agent's sync events to /healthz, Prometheus metrics and the
per-service health-check node ports (externalTrafficPolicy Local)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from pyagent.core.config import NodeConfig
from pyagent.observe.health import HealthState, start_health_server
from pyagent.observe.healthcheck import ServiceHealthServer
from pyagent.observe.metrics import Metrics, start_metrics_server

log = logging.getLogger(__name__)


class Observability:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.health = HealthState(timeout=2 * config.sync_period)
        self.metrics = Metrics()
        self.hc = ServiceHealthServer(_hc_addresses(config))
        self._stops: list[Callable[[], None]] = []
        self.agent: Any = None
        self._hc: dict[tuple[str, str], tuple[int, int]] = {}
        self.healthz_port = self.metrics_port = 0

    def attach(self, agent: Any) -> None:
        self.agent = agent

        def reader(name: str) -> Callable[[], dict]:
            # The dataplane creates its stats in setup(), after attach().
            def read() -> dict:
                stats = getattr(agent.dataplane, "stats", None)
                return getattr(stats, name)() if stats is not None else {}
            return read

        self.metrics.set_sources(map_pressure=reader("map_pressure"),
                                 service_connections=reader("service_connections"),
                                 backend_connections=reader("backend_connections"))

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
        self.health.queued_update()
        self.metrics.queued(time.time())

    def on_sync_failed(self) -> None:
        self.metrics.synced(0.0, time.time(), ok=False)

    def on_synced(self, duration: float, full: bool, queued_at: float | None,
                  states: dict, pending: tuple[int, int]) -> None:
        now = time.time()
        self.health.updated()
        self.metrics.synced(duration, now)
        if queued_at is not None:
            self.metrics.network_programming_duration.observe(max(0.0, now - queued_at))
        if self.agent is None:
            return
        store = self.agent.store
        svc_pending, ep_pending = store.pending()
        self.metrics.service_changes_pending.set(svc_pending)
        self.metrics.endpoint_changes_pending.set(ep_pending)
        self._sync_totals(store)
        for kind in ("Service", "EndpointSlice", "Node"):
            n = sum(1 for k in store.errors if k[0] == kind)
            self.metrics.object_errors.labels(kind).set(n)
        self.metrics.source_errors.set(len(getattr(store, "source_problems", ())))
        refused = self.agent.refused()
        counts: dict[tuple[str, str], int] = {}
        for r in refused:
            counts[(r["reason"], r["map"])] = counts.get((r["reason"], r["map"]), 0) + 1
        self.metrics.set_refused(counts)
        node = store.node() if hasattr(store, "node") else None
        if node:
            self.health.sync_node(node)
        self._sync_health_checks(states, full)
        self._write_status(now, duration, refused)

    def _write_status(self, now: float, duration: float, refused: list[dict]) -> None:
        """For `pyagent status` / `services list`; names by frontend."""
        from pyagent.observe import statusfile

        dp = self.agent.dataplane
        names = {}
        rec = getattr(dp, "reconciler", None)
        if rec is not None:
            names = {"|".join(map(str, fe.key)): fe.service for fe in rec.kernel.values()}
        statusfile.write(self.config.bpffs, {
            "pid": os.getpid(), "mode": self.config.mode, "nodeName": self.config.node_name,
            "cgroup": str(getattr(dp, "cgroup", "") or ""), "bpffs": self.config.bpffs,
            "interfaces": list(self.config.interfaces), "lastSync": now,
            "lastSyncSeconds": duration, "healthzPort": self.healthz_port,
            "metricsPort": self.metrics_port, "errors": {
                "/".join(k): v for k, v in self.agent.errors.items()},
            "objectErrors": list(self.agent.store.error_messages()),
            "sourceErrors": list(getattr(self.agent.store, "source_problems", ())),
            "refused": refused, "frontendNames": names})

    def _sync_totals(self, store: Any) -> None:
        totals = getattr(store, "totals", None)
        if not totals:
            return
        svc_total, ep_total = totals()
        for counter, value in ((self.metrics.service_changes_total, svc_total),
                               (self.metrics.endpoint_changes_total, ep_total)):
            delta = value - counter._value.get()
            if delta > 0:
                counter.inc(delta)

    def _sync_health_checks(self, states: dict, full: bool) -> None:
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
