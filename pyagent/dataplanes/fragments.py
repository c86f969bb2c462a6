"""What the rule-based modes (iptables, IPVS, userspace, nftables) keep per
Service: the fragment its ports last rendered to.

A sync renders only the Services it is given; one that fails to render keeps
its previous fragment (and rules) and reports why, so one bad Service never
stops the others. The dataplane then assembles its whole ruleset from the
kept fragments, in Service order (deterministic output).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import SyncStatus

log = logging.getLogger(__name__)
F = TypeVar("F")
Ports = tuple[ServicePortState, ...]


class FragmentCache(Generic[F]):
    def __init__(self) -> None:
        self._by_service: dict[ServiceKey, F] = {}

    def update(self, states: Mapping[ServiceKey, Ports], full: bool,
               render: Callable[[ServiceKey, Ports], F]) -> SyncStatus:
        """Render every Service of `states` (an empty tuple removes it; with
        `full`, Services not named go too). A render that raises keeps the
        Service's previous fragment and reports the error."""
        status: SyncStatus = {}
        if full:
            for svc in set(self._by_service) - set(states):
                del self._by_service[svc]
        for svc, ports in states.items():
            if not ports:
                self._by_service.pop(svc, None)
                status[svc] = None
                continue
            try:
                self._by_service[svc] = render(svc, ports)
                status[svc] = None
            except Exception as exc:  # keep the previous rules of this Service
                log.exception("rendering %s/%s", *svc)
                status[svc] = f"render failed: {exc}"
        return status

    def in_order(self) -> Iterator[F]:
        """The kept fragments, sorted by Service."""
        for _svc, frag in self.items():
            yield frag

    def get(self, svc: ServiceKey) -> F | None:
        return self._by_service.get(svc)

    def items(self) -> Iterator[tuple[ServiceKey, F]]:
        """(Service, fragment), sorted by Service."""
        for svc in sorted(self._by_service):
            yield svc, self._by_service[svc]

    def discard(self, svc: ServiceKey) -> None:
        self._by_service.pop(svc, None)

    def clear(self) -> None:
        self._by_service.clear()

    def __contains__(self, svc: object) -> bool:
        return svc in self._by_service

    def __len__(self) -> int:
        return len(self._by_service)
