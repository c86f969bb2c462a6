"""The desired state of one node: what every dataplane applies, and what
`pyagent plan` prints and `pyagent trace` walks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, ServicePort, ServicePortKey
from pyagent.core.parse import ParsedSlice, parse_cidr
from pyagent.core.selection import categorize, dedupe


@dataclass(frozen=True, slots=True)
class ServicePortState:
    service: ServicePort
    # None: that policy is never used (or no slice carries the port at all);
    # empty: it is used and no endpoint qualifies.
    cluster_endpoints: tuple[Endpoint, ...] | None
    local_endpoints: tuple[Endpoint, ...] | None
    all_endpoints: tuple[Endpoint, ...]  # every endpoint this node may send to
    has_any_endpoints: bool  # usable endpoints exist somewhere in the cluster
    local_ready_count: int = 0  # for the health-check node port (ready only)
    # Allowed sources for the LB IPs; empty means no restriction. The LB IPs
    # are included when a range holds the node IP (node traffic may be SNATed
    # to the LB IP on its way back in).
    lb_source_allow: tuple[str, ...] = ()
    # Serving-and-terminating endpoints (any node): the eBPF dataplane keeps
    # them in its maps after the active ones, so established flows to them
    # keep working while they drain, without receiving new ones.
    terminating: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> ServicePortKey:
        return self.service.key


def _endpoints_for(sp: ServicePort, slices: Iterable[ParsedSlice],
                   node_name: str) -> list[Endpoint] | None:
    """Endpoints of the slices of `sp`'s family whose port matches by name and
    protocol; None when no slice carries that port at all."""
    out: list[Endpoint] | None = None
    for sl in slices:
        if sl.family != sp.family:
            continue
        for port_name, number, protocol in sl.ports:
            if port_name != sp.port_name or protocol != sp.protocol:
                continue
            out = out if out is not None else []
            for s in sl.endpoints:
                local = bool(node_name) and s.node_name == node_name
                # The slice's own objects when they fit (the usual one-port case).
                out.append(s if s.port == number and s.is_local == local else
                           Endpoint.make(s.ip, number, s.ready, s.serving, s.terminating,
                                         s.node_name, s.zone_hints, s.node_hints, local))
    return out


def _lb_source_allow(sp: ServicePort, config: NodeConfig) -> tuple[str, ...]:
    if not sp.lb_source_ranges:
        return ()
    allow = list(sp.lb_source_ranges)
    node_ip = config.primary_node_ip(sp.family)
    if node_ip is not None and any(node_ip in parse_cidr(r) for r in sp.lb_source_ranges):
        allow += [f"{ip}/{node_ip.max_prefixlen}" for ip in sp.lb_ips]
    return tuple(dict.fromkeys(allow))


def compute_service_state(ports: Iterable[ServicePort], slices: Iterable[ParsedSlice],
                          config: NodeConfig, zone: str) -> tuple[ServicePortState, ...]:
    """The state of one service's ports; costs O(size of that service)."""
    slices = sorted(slices, key=lambda s: s.name)
    out = []
    for sp in ports:
        found = _endpoints_for(sp, slices, config.node_name)
        eps = dedupe(found) if found is not None else []
        sel = categorize(eps if found is not None else None, uses_cluster=sp.uses_cluster_endpoints,
                         uses_local=sp.uses_local_endpoints, node_name=config.node_name,
                         zone=zone, prefer_same_node=config.prefer_same_node)
        out.append(ServicePortState(
            service=sp,
            cluster_endpoints=sel.cluster,
            local_endpoints=sel.local,
            all_endpoints=sel.all,
            has_any_endpoints=sel.has_any,
            local_ready_count=sum(1 for e in eps if e.is_local and e.ready),
            lb_source_allow=_lb_source_allow(sp, config),
            terminating=tuple(e for e in eps if e.terminating and e.serving),
        ))
    return tuple(sorted(out, key=lambda s: s.key))


@dataclass(frozen=True)
class DesiredState:
    service_ports: tuple[ServicePortState, ...]  # sorted by key
    errors: tuple[str, ...] = ()

    def to_plan_json(self) -> dict[str, Any]:
        return {"servicePorts": [plan_entry(s) for s in self.service_ports]}

    def no_local_endpoints(self) -> tuple[int, int]:
        """(internal, external): service ports whose Local policy has no endpoint
        on this node although endpoints exist elsewhere (kube-proxy's
        sync_proxy_rules_no_local_endpoints_total gauge)."""
        internal = external = 0
        for s in self.service_ports:
            if s.has_any_endpoints and not s.local_endpoints:
                internal += s.service.internal_policy_local
                external += s.service.external_policy_local and s.service.externally_accessible
        return internal, external


def _addrs(eps: tuple[Endpoint, ...] | None) -> list[str] | None:
    return None if eps is None else sorted(e.addr for e in eps)


def plan_entry(s: ServicePortState) -> dict[str, Any]:
    sp = s.service
    return {
        "namespace": sp.namespace,
        "name": sp.name,
        "portName": sp.port_name,
        "protocol": sp.protocol,
        "port": sp.port,
        "ipFamily": f"IPv{sp.family}",
        "type": sp.service_type,
        "clusterIP": sp.cluster_ip,
        "nodePort": sp.node_port,
        "externalIPs": list(sp.external_ips),
        "loadBalancerIPs": list(sp.lb_ips),
        "loadBalancerSourceRanges": list(sp.lb_source_ranges),
        "externalTrafficPolicy": "Local" if sp.external_policy_local else "Cluster",
        "internalTrafficPolicy": "Local" if sp.internal_policy_local else "Cluster",
        "healthCheckNodePort": sp.health_check_node_port,
        "sessionAffinityTimeout": sp.affinity_timeout,
        "clusterEndpoints": _addrs(s.cluster_endpoints),
        "localEndpoints": _addrs(s.local_endpoints),
        "allEndpoints": _addrs(s.all_endpoints),
        "hasAnyEndpoints": s.has_any_endpoints,
        "localReadyEndpoints": s.local_ready_count,
    }


def diff_service_ports(old: DesiredState, new: DesiredState) -> tuple[
        list[ServicePortState], list[ServicePortState],
        list[tuple[ServicePortState, ServicePortState]]]:
    """(added, removed, changed) between two states, keyed by
    (namespace, name, port name, protocol, family); unchanged ports are left out."""
    before = {s.key: s for s in old.service_ports}
    after = {s.key: s for s in new.service_ports}
    added = [after[k] for k in sorted(after.keys() - before.keys())]
    removed = [before[k] for k in sorted(before.keys() - after.keys())]
    changed = [(before[k], after[k]) for k in sorted(before.keys() & after.keys())
               if before[k] != after[k]]
    return added, removed, changed
