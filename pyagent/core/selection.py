"""Which endpoints a node uses for one service port (kube-proxy's rules).

- Usable means ready; only when no ready endpoint exists does a set fall back
  to serving-and-terminating ones, decided separately for the cluster set and
  for the local set.
- Topology hints narrow the cluster set only, and only when every ready
  endpoint carries a hint and one matches this node (node hints, when the
  PreferSameTrafficDistribution gate is on) or its zone.
- has_any_endpoints is cluster-wide: it is what separates DROP (endpoints
  exist, none fit the policy) from REJECT (no endpoints at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyagent.core.model import Endpoint

PREFER_SAME_NODE = "PreferSameNode"
PREFER_SAME_ZONE = "PreferSameZone"


@dataclass(frozen=True)
class Selection:
    cluster: tuple[Endpoint, ...] | None  # None: the service never uses Cluster policy
    local: tuple[Endpoint, ...] | None  # None: the service never uses Local policy
    all: tuple[Endpoint, ...]  # everything reachable from this node
    has_any: bool


def _sorted(eps: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    return tuple(sorted(eps, key=lambda e: e.addr))


def topology_mode(endpoints: Sequence[Endpoint], node_name: str, zone: str,
                  prefer_same_node: bool) -> str | None:
    """The hint kind to honour, decided from the ready endpoints only."""
    ready = [e for e in endpoints if e.ready]
    if not ready:
        return None
    if prefer_same_node and all(e.node_hints for e in ready) and any(
            node_name in e.node_hints for e in ready):
        return PREFER_SAME_NODE
    if all(e.zone_hints for e in ready) and any(zone in e.zone_hints for e in ready):
        return PREFER_SAME_ZONE
    return None


def categorize(endpoints: Sequence[Endpoint] | None, *, uses_cluster: bool, uses_local: bool,
               node_name: str = "", zone: str = "",
               prefer_same_node: bool = False) -> Selection:
    """Split a service port's endpoints into the sets this node uses.

    A set is None when the service never uses that kind of endpoint, and empty
    when it does but none qualify. `endpoints` None means the service port has
    no endpoint data at all (no slice carries its port): both sets are None.
    The result does not depend on the order of `endpoints` (sets are sorted).
    """
    if endpoints is None:
        return Selection(None, None, (), False)
    cluster: tuple[Endpoint, ...] | None = None
    local: tuple[Endpoint, ...] | None = None
    mode = None
    if uses_cluster:
        mode = topology_mode(endpoints, node_name, zone, prefer_same_node)
        chosen = [e for e in endpoints if e.ready and _fits(e, mode, node_name, zone)]
        if not chosen:
            # No ready endpoint anywhere (topology never empties the set), so
            # fall back to serving-terminating ones, ignoring topology.
            chosen = [e for e in endpoints if e.serving and e.terminating and not e.ready]
        cluster = _sorted(chosen)
    has_any = any(e.usable for e in endpoints)
    local_fallback = False
    if uses_local:
        mine = [e for e in endpoints if e.is_local]
        chosen = [e for e in mine if e.ready]
        if not chosen:
            chosen = [e for e in mine if e.serving and e.terminating]
            local_fallback = bool(chosen)
        local = _sorted(chosen)
    if cluster is None:
        reachable = local or ()
    elif local is None or (mode is None and not local_fallback):
        reachable = cluster  # the cluster set already holds every ready local endpoint
    else:
        reachable = _sorted({e.addr: e for e in cluster + local}.values())
    return Selection(cluster, local, reachable, has_any)


def _fits(ep: Endpoint, mode: str | None, node_name: str, zone: str) -> bool:
    if mode == PREFER_SAME_NODE:
        return node_name in ep.node_hints
    if mode == PREFER_SAME_ZONE:
        return zone in ep.zone_hints
    return True


def _rank(ep: Endpoint) -> tuple:
    """Which copy of a duplicated ip:port wins: a non-terminating one, then the
    most usable; the rest only makes the choice independent of input order."""
    return (not ep.terminating, ep.ready, ep.serving, ep.is_local, ep.node_name or "",
            sorted(ep.zone_hints), sorted(ep.node_hints))


def dedupe(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """One endpoint per ip:port (the same address may appear in several slices)."""
    best: dict[tuple[str, int], Endpoint] = {}
    for ep in endpoints:
        key = (ep.ip, ep.port)
        old = best.get(key)
        if old is None or (old != ep and _rank(ep) > _rank(old)):
            best[key] = ep
    return list(best.values())
