"""The interface every dataplane implements (eBPF, iptables, nftables, ...).

Dataplanes are the only code that touches the kernel. They get the complete
per-node state of the Services that changed and report a status per Service
instead of raising: one bad Service never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState

# Per Service: None when programmed, else why not (the previous state stays).
SyncStatus = dict[ServiceKey, str | None]


class Refusal(str):
    """A SyncStatus message that also says why, for metrics and `pyagent
    status`: `reason` (e.g. "map_full") and the map concerned, if any."""

    reason: str
    map: str

    def __new__(cls, message: str, reason: str, map: str = "") -> Refusal:  # noqa: A002
        self = super().__new__(cls, message)
        self.reason, self.map = reason, map
        return self


class Dataplane(Protocol):
    name: str

    def setup(self) -> None:
        """Load/attach/adopt what a previous run left, without disrupting it."""

    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        """Program `states` (every port of each Service named; an empty tuple
        removes the Service). With `full`, `states` names every Service that
        exists, and anything else the dataplane holds is removed."""

    def close(self) -> None:
        """Stop, leaving the kernel state in place for the next agent."""

    def cleanup(self) -> None:
        """Remove everything this dataplane ever put in the kernel."""

    def describe(self) -> Description:
        """What it holds now, for the observers (status file, CLI)."""

    def counters(self) -> StatsReader | None:
        """Live counters read at scrape time (eBPF), else None."""


@runtime_checkable
class StagedSetup(Protocol):
    """A dataplane whose setup() returns before its programs are loaded
    (eBPF: the maps first, the compiles meanwhile); its first full sync
    puts them in place once loaded."""

    def wait_loaded(self) -> None:
        """Block until the programs are loaded; raise if one failed."""


@dataclass(frozen=True)
class FrontendInfo:
    """One frontend the dataplane programmed, by name (not a key string)."""
    address: str
    port: int
    protocol: str  # TCP | UDP | SCTP
    scope: str  # internal (pods, the node) | external (traffic entering the node)
    service: str  # namespace/name:port

    def to_json(self) -> dict[str, str | int]:
        return {"address": self.address, "port": self.port, "protocol": self.protocol,
                "scope": self.scope, "service": self.service}


class StatsReader(Protocol):
    def map_pressure(self) -> dict[str, float]: ...

    def service_connections(self) -> dict[str, float]: ...

    def backend_connections(self) -> dict[str, float]: ...

    def north_south_packets(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Description:
    mode: str
    cgroup: str = ""  # the cgroup the socket hooks are on (eBPF)
    frontends: tuple[FrontendInfo, ...] = ()  # eBPF: the frontends in the maps
    # eBPF: per node interface, "native" / "generic" (XDP), or why TC alone
    xdp: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Mode:
    """What a mode's module (pyagent.dataplanes.<name>.dataplane) provides as
    MODE, for pyagent.dataplanes.registry."""
    name: str
    create: Callable[[NodeConfig], Dataplane]
    present: Callable[[NodeConfig], bool]
    remove: Callable[[NodeConfig], str]
    # what `pyagent cleanup` prints; default: remove() when present()
    clean: Callable[[NodeConfig], str] | None = None

    def cleanup(self, config: NodeConfig) -> str:
        """Remove this mode's state; says what went (idempotent)."""
        if self.clean is not None:
            return self.clean(config)
        return self.remove(config) if self.present(config) else "nothing to clean"
