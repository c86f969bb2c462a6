"""What the agent tells its observers after each sync (plain, typed data).

Observers (health, metrics, the health-check node ports, the status file)
read only a SyncReport and the dataplane's describe() output: they hold no
reference to the agent, its store or the dataplane's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState


@dataclass(frozen=True)
class Refused:
    """A Service the dataplane did not program (it keeps its last good state)."""
    service: str  # namespace/name
    reason: str  # e.g. "map_full"; "error" when the dataplane gave no reason
    map: str  # the map concerned, if any
    message: str

    def to_json(self) -> dict[str, str]:
        return {"service": self.service, "reason": self.reason, "map": self.map,
                "message": self.message}


@dataclass(frozen=True)
class SyncReport:
    full: bool
    duration: float  # seconds the dataplane sync took
    finished: float  # wall-clock time it finished
    # the Services this sync looked at (a full sync: every Service)
    states: Mapping[ServiceKey, tuple[ServicePortState, ...]]
    # EndpointSlice last-change-trigger-times this sync programmed (latency)
    trigger_times: tuple[float, ...] = ()
    errors: Mapping[ServiceKey, str] = field(default_factory=dict)  # every Service refused
    refused: tuple[Refused, ...] = ()
    # Services the store refused as invalid (they keep their last good version)
    invalid_services: Mapping[ServiceKey, str] = field(default_factory=dict)
    object_errors: tuple[str, ...] = ()  # invalid objects, one line each
    object_error_counts: Mapping[str, int] = field(default_factory=dict)  # by kind
    source_problems: tuple[str, ...] = ()
    pending: tuple[int, int] = (0, 0)  # service / endpoint changes that arrived meanwhile
    totals: tuple[int, int] = (0, 0)  # service / endpoint changes applied since start
    node: Mapping[str, Any] | None = None  # this node's Node object, when known


class SyncObserver(Protocol):
    def on_queued(self) -> None:
        """A change is waiting for the next sync."""

    def on_sync_failed(self) -> None:
        """The dataplane raised; the agent retries with a full sync."""

    def on_synced(self, report: SyncReport) -> None:
        """A sync finished (some Services may have been refused)."""
