"""Per-service health-check node ports for externalTrafficPolicy: Local.

Like kube-proxy's ServiceHealthServer: one HTTP listener per
healthCheckNodePort on each given address. A load balancer probes it and
sends traffic to this node only while the service has a ready local endpoint
(200) and the proxy itself is healthy. `sync` opens and closes listeners
incrementally; a listener whose port keeps its service is left running and
only sees the new endpoint count.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from pyagent.observe.httpserver import DEFAULT_LIMITS, JSONHandler, Limits, Reactor

log = logging.getLogger(__name__)

ServiceName = tuple[str, str]  # (namespace, name)


class ServiceHealthServer:
    def __init__(
        self,
        addresses: Iterable[str] = ("0.0.0.0",),
        proxy_healthy: Callable[[], bool] = lambda: True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._addresses = tuple(addresses)
        self._limits = limits
        self._reactor: Reactor | None = None  # one thread for every port, made on first use
        self._proxy_healthy = proxy_healthy
        self._sync_lock = threading.Lock()  # one sync at a time
        self._lock = threading.Lock()  # the state handlers read
        self._by_port: dict[int, ServiceName] = {}
        self._counts: dict[ServiceName, int] = {}
        self._stops: dict[int, list[Callable[[], None]]] = {}

    def sync(self, services: Mapping[ServiceName, tuple[int, int]]) -> dict[ServiceName, str]:
        """Make the listeners match {service: (healthCheckNodePort, local ready
        endpoints)}. Returns {service: error} for ports that could not be
        served; those are retried on the next sync."""
        with self._sync_lock:
            return self._sync(services)

    def _sync(self, services: Mapping[ServiceName, tuple[int, int]]) -> dict[ServiceName, str]:
        wanted: dict[int, ServiceName] = {}
        errors: dict[ServiceName, str] = {}
        for svc, (port, _) in sorted(services.items()):
            if not 0 < port <= 65535:
                errors[svc] = f"invalid healthCheckNodePort {port}"
            elif port in wanted:
                errors[svc] = f"healthCheckNodePort {port} already used by {wanted[port]}"
            else:
                wanted[port] = svc
        with self._lock:
            self._counts = {svc: count for svc, (_, count) in services.items()}
            stale = [p for p, svc in self._by_port.items() if wanted.get(p) != svc]
            for port in stale:
                del self._by_port[port]
            to_close = [self._stops.pop(p) for p in stale if p in self._stops]
        for stops in to_close:
            for stop in stops:
                stop()
        for port, svc in wanted.items():
            with self._lock:
                if port in self._stops:
                    continue
            try:
                stops = self._listen(port)
            except OSError as e:
                log.warning("health check port %d for %s/%s: %s", port, *svc, e)
                errors[svc] = f"cannot listen on port {port}: {e}"
                continue
            with self._lock:
                self._by_port[port] = svc
                self._stops[port] = stops
        return errors

    def _listen(self, port: int) -> list[Callable[[], None]]:
        """One listener per address; all or nothing."""
        if self._reactor is None:
            self._reactor = Reactor("healthcheck", self._limits)
        stops: list[Callable[[], None]] = []
        try:
            for address in self._addresses:
                stops.append(self._reactor.listen(address, port, self._handler(port))[1])
        except OSError:
            for stop in stops:
                stop()
            raise
        return stops

    def _handler(self, port: int) -> type[JSONHandler]:
        owner = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:
                found = owner._lookup(port)
                if found is None:
                    self.send_json(503, json.dumps({"error": "service not served"}))
                    return
                (namespace, name), count = found
                healthy = owner._proxy_healthy()
                body = {
                    "service": {"namespace": namespace, "name": name},
                    "localEndpoints": count,
                    "serviceProxyHealthy": healthy,
                }
                self.send_json(200 if count > 0 and healthy else 503, json.dumps(body))

            do_HEAD = do_GET

        return Handler

    def _lookup(self, port: int) -> tuple[ServiceName, int] | None:
        with self._lock:
            svc = self._by_port.get(port)
            return None if svc is None else (svc, self._counts.get(svc, 0))

    def ports(self) -> dict[int, ServiceName]:
        """Ports currently served."""
        with self._lock:
            return dict(self._by_port)

    def stop(self) -> None:
        self.sync({})
        if self._reactor is not None:
            self._reactor.stop()
            self._reactor = None
