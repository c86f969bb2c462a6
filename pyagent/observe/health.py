"""kube-proxy-compatible /healthz and /livez (default 0.0.0.0:10256).

Semantics follow kube-proxy's ProxyHealthServer: healthy unless an update was
queued and has not been applied within `timeout` seconds (kube-proxy uses
2 x syncPeriod). /healthz is also unhealthy when the node is not eligible
(being deleted, or tainted for deletion by the cluster autoscaler); /livez
ignores node eligibility. A proxier that has not synced yet counts as
healthy while its queued update is younger than the timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pyagent.observe.httpserver import (
    DEFAULT_LIMITS,
    JSONHandler,
    Limits,
    parse_bind_address,
    serve,
)

DEFAULT_BIND = "0.0.0.0:10256"
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


def go_time(ts: float | None) -> str:
    """Format like Go's time.Time.String() in UTC, as kube-proxy's body does."""
    if ts is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    dt = datetime.fromtimestamp(ts, UTC)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


class HealthState:
    """Queued/applied timestamps per IP family ("" when single-stack).

    `clock` returns wall-clock seconds; it is injectable for tests.
    """

    def __init__(self, timeout: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._oldest_queued: dict[str, float] = {}
        self._last_updated: dict[str, float] = {}
        self._node_eligible = True

    def queued_update(self, family: str = "") -> None:
        """A change arrived that the datapath has not applied yet."""
        with self._lock:
            self._oldest_queued.setdefault(family, self._clock())

    def updated(self, family: str = "") -> None:
        """The datapath applied everything queued so far."""
        with self._lock:
            self._oldest_queued.pop(family, None)
            self._last_updated[family] = self._clock()

    def sync_node(self, node: dict) -> None:
        """Derive node eligibility from this node's v1 Node object."""
        meta = node.get("metadata") or {}
        taints = (node.get("spec") or {}).get("taints") or []
        self.set_node_eligible(
            not meta.get("deletionTimestamp")
            and not any(t.get("key") == TO_BE_DELETED_TAINT for t in taints)
        )

    def set_node_eligible(self, eligible: bool) -> None:
        with self._lock:
            self._node_eligible = eligible

    @property
    def node_eligible(self) -> bool:
        with self._lock:
            return self._node_eligible

    def status(self) -> tuple[bool, float | None, float]:
        """(healthy, last updated, now), ignoring node eligibility."""
        with self._lock:
            now = self._clock()
            last = max(self._last_updated.values(), default=None)
            for family, queued in self._oldest_queued.items():
                if now - queued >= self.timeout:
                    return False, self._last_updated.get(family), now
            return True, last, now

    def is_healthy(self) -> bool:
        return self.status()[0] and self.node_eligible

    def healthz(self) -> tuple[int, str]:
        healthy, last, now = self.status()
        eligible = self.node_eligible
        healthy = healthy and eligible
        if healthy:
            last = now  # kube-proxy reports "recent" when healthy, for compatibility
        body = {"lastUpdated": go_time(last), "currentTime": go_time(now), "nodeEligible": eligible}
        return (200 if healthy else 503), json.dumps(body)

    def livez(self) -> tuple[int, str]:
        healthy, last, now = self.status()
        if healthy:
            last = now
        body = {"lastUpdated": go_time(last), "currentTime": go_time(now)}
        return (200 if healthy else 503), json.dumps(body)


def start_health_server(bind: str, state: HealthState, limits: Limits = DEFAULT_LIMITS,
                        ) -> tuple[str, int, Callable[[], None]]:
    """Serve /healthz and /livez; returns (host, bound port, stop). One
    thread, bounded connections and timeouts (pyagent.observe.httpserver)."""
    host, port = parse_bind_address(bind, default_port=10256)

    class Handler(JSONHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self.send_json(*state.healthz())
            elif path == "/livez":
                self.send_json(*state.livez())
            else:
                self.send_json(404, json.dumps({"error": "not found"}))

        do_HEAD = do_GET

    server, stop = serve(host, port, Handler, name="healthz", limits=limits)
    return host, server.server_address[1], stop
