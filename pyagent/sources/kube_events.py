"""Kubernetes Events on the Services the agent refuses (invalid objects,
or ones the datapath could not program), so `kubectl describe service`
says why a Service does not work on a node. The RBAC of
deploy/kubernetes/rbac.yaml grants events create.

One Warning Event per (Service, reason) while the refusal lasts: a Service
refused again after it was fixed gets a new one. Events are posted from a
thread with a bounded queue, so a slow API server never holds a sync up
(a full queue drops the event and logs it).
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from pyagent.core.model import ServiceKey
from pyagent.sources.kube_http import post

log = logging.getLogger(__name__)

REASON = "ServiceRefused"
COMPONENT = "pyagent"


class RefusedServiceEvents:
    """Fed by node/wiring.py's EventsObserver from each SyncReport."""

    def __init__(self, api_client: Any, node_name: str, max_queued: int = 1000) -> None:
        self._api_client = api_client
        self.node_name = node_name
        self._reported: dict[ServiceKey, str] = {}
        self._queue: queue.Queue[tuple[ServiceKey, str] | None] = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._run, name="service-events", daemon=True)
        self._thread.start()

    def update(self, refused: Mapping[ServiceKey, str]) -> None:
        """The Services refused now (all of them, after each sync)."""
        for key, why in refused.items():
            if self._reported.get(key) == why:
                continue
            self._reported[key] = why
            try:
                self._queue.put_nowait((key, why))
            except queue.Full:
                log.warning("event queue full: no Event for %s/%s", *key)
        for key in set(self._reported) - set(refused):
            del self._reported[key]  # fixed: a new refusal is news again

    def event(self, key: ServiceKey, why: str) -> dict:
        ns, name = key
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Service", "namespace": ns,
                               "name": name},
            "reason": REASON, "message": f"not served on node {self.node_name}: {why}"[:1024],
            "type": "Warning", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT, "reportingInstance": self.node_name,
        }

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            key, why = item
            try:
                post(self._api_client, f"/api/v1/namespaces/{key[0]}/events",
                     self.event(key, why))
            except Exception as exc:  # noqa: BLE001 - an Event is best effort
                log.warning("cannot post an Event for Service %s/%s: %s", *key, exc)

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
