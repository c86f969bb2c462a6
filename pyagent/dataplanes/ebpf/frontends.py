"""From per-node service state to the frontends the BPF maps hold (pure).

A frontend is one (address, port, protocol, scope) key of the services map
with its ordered backend list. Scope INTERNAL is what pods and the node see
(the socket hooks); scope EXTERNAL is what traffic entering the node sees (the
TC programs). Which endpoint set each gets is kube-proxy's rule, already
computed by the selection; this module only decides which set goes where.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from pyagent.core.config import NodeConfig
from pyagent.core.model import PROTOCOL_NUMBERS, Endpoint
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.iptables import policy as P

ALGORITHMS = {
    "random": L.Algorithm.RANDOM,
    "round-robin": L.Algorithm.ROUND_ROBIN,
    "least-conn": L.Algorithm.LEAST_CONN,
    "maglev": L.Algorithm.MAGLEV,
    # IPVS scheduler names, for Services annotated for the IPVS mode
    "rr": L.Algorithm.ROUND_ROBIN, "wrr": L.Algorithm.ROUND_ROBIN,
    "lc": L.Algorithm.LEAST_CONN, "wlc": L.Algorithm.LEAST_CONN,
    "sed": L.Algorithm.LEAST_CONN, "nq": L.Algorithm.LEAST_CONN,
    "mh": L.Algorithm.MAGLEV, "sh": L.Algorithm.MAGLEV, "dh": L.Algorithm.MAGLEV,
}


class Backend(NamedTuple):
    """A tuple, not a dataclass: a full sync creates one per endpoint (100k+)."""

    ip: str
    port: int
    proto: int
    local: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.ip, self.port, self.proto)


@dataclass(frozen=True, slots=True)
class Frontend:
    ip: str
    port: int
    proto: int
    scope: int
    flags: int
    backends: tuple[Backend, ...]  # active, in slot order
    affinity_timeout: int = 0
    algorithm: int = L.Algorithm.RANDOM
    service: str = ""  # "namespace/name:port" for status; not in the maps
    # loadBalancerSourceRanges (EXTERNAL LB frontends): in the TC tries, keyed
    # by rev-NAT id, synced beside the services map (not part of kernel_view)
    source_ranges: tuple[str, ...] = ()
    # draining backends, in slots after the active ones (the master's qcount):
    # never picked for a new connection, still known for established ones
    terminating: tuple[Backend, ...] = ()

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.ip, self.port, self.proto, self.scope)

    @property
    def addr(self) -> tuple[str, int, int]:
        """What rev-NAT ids are keyed on: both scopes of a VIP share one id."""
        return (self.ip, self.port, self.proto)

    def kernel_view(self) -> tuple:
        """Everything the maps record about this frontend (not `service`)."""
        return (self.key, self.flags, self.backends, self.terminating, self.affinity_timeout,
                self.algorithm)

    @property
    def slots(self) -> tuple[Backend, ...]:
        return self.backends + self.terminating


def _backends(eps: Iterable[Endpoint] | None, proto: int, node: str) -> tuple[Backend, ...]:
    # Addresses are normalised by pyagent.core.parse: no re-parsing on this hot path.
    return tuple(sorted(Backend(e.ip, e.port, proto, e.node_name == node) for e in eps or ()))


def frontends_for(sps: ServicePortState, config: NodeConfig) -> list[Frontend]:
    """The frontends of one service port.

    INTERNAL scope (socket path: pods and the node):
    - ClusterIP: iTP=Local uses the local set, else the cluster set.
    - NodePort on node IPs, externalIPs, LB IPs: pods and the node are
      short-circuited to the cluster set whatever eTP says (kube-proxy rule).
      LB IPs with source ranges are left to the TC path, which sees sources.
    EXTERNAL scope (TC path, only when the node has TC interfaces): NodePort
    on node IPs, externalIPs and LB IPs; eTP=Cluster: the cluster set,
    masqueraded; eTP=Local: the local set, client address kept.
    A frontend with no backends rejects, unless endpoints exist elsewhere and
    only the policy excludes them, in which case it drops.
    ClusterIPs get no EXTERNAL copy: traffic entering the node for one is
    served by the TC program from the INTERNAL entry (LB_F_CLUSTER_IP only),
    whose set is already kube-proxy's for it (iTP decides); whether it is
    masqueraded is node-wide (cluster_ip_masquerade_families).
    """
    svc = sps.service
    proto = PROTOCOL_NUMBERS[svc.protocol]
    node = config.node_name
    name = f"{svc.namespace}/{svc.name}:{svc.port_name}" if svc.port_name else \
        f"{svc.namespace}/{svc.name}"
    common = {
        "affinity_timeout": svc.affinity_timeout or 0,
        # the annotation, else the node's default (an unknown annotation too)
        "algorithm": int(ALGORITHMS[svc.lb_algorithm] if svc.lb_algorithm in ALGORITHMS
                         else ALGORITHMS.get(config.lb_algorithm, L.Algorithm.RANDOM)),
        "service": name,
    }
    base_flags = 0
    if svc.affinity_timeout:
        base_flags |= L.ServiceFlag.AFFINITY
    if svc.external_policy_local:
        base_flags |= L.ServiceFlag.LOCAL_ETP
    if svc.internal_policy_local:
        base_flags |= L.ServiceFlag.LOCAL_ITP

    shared: dict[int, tuple[Backend, ...]] = {}  # id(endpoint set) -> its backends

    def make(ip: str, port: int, kind_flag: int, eps: tuple[Endpoint, ...] | None,
             scope: int = L.SCOPE_INTERNAL, ranges: tuple[str, ...] = ()) -> Frontend:
        # Frontends of one endpoint set share one backend tuple (NodePort,
        # external and LB IPs repeat the cluster set).
        backends = shared.get(id(eps))
        if backends is None:
            backends = shared[id(eps)] = _backends(eps, proto, node)
        active = {b.key for b in backends}
        local_only = eps is not None and eps is sps.local_endpoints
        draining = tuple(b for b in _backends(
            (e for e in sps.terminating if not local_only or e.node_name == node), proto, node)
            if b.key not in active)
        flags = base_flags | kind_flag
        if not backends and sps.has_any_endpoints:
            flags |= L.ServiceFlag.DROP_NO_BACKEND
        return Frontend(ip, port, proto, scope, int(flags), backends, **common,
                        source_ranges=ranges, terminating=draining)

    out: list[Frontend] = []
    if svc.cluster_ip:
        eps = sps.local_endpoints if svc.internal_policy_local else sps.cluster_endpoints
        out.append(make(svc.cluster_ip, svc.port, L.ServiceFlag.CLUSTER_IP, eps))
    cluster = sps.cluster_endpoints
    node_ports = config.node_port_ips(svc.family) if svc.node_port else ()
    for ip in svc.external_ips:
        out.append(make(ip, svc.port, L.ServiceFlag.EXTERNAL_IP, cluster))
    if not svc.lb_source_ranges:
        for ip in svc.lb_ips:
            out.append(make(ip, svc.port, L.ServiceFlag.LOADBALANCER, cluster))
    for ip in node_ports:
        out.append(make(ip, svc.node_port, L.ServiceFlag.NODE_PORT, cluster))
    if not config.interfaces:
        return out

    if svc.external_policy_local:
        ext_eps, ext_flag = sps.local_endpoints, 0
    else:
        ext_eps, ext_flag = cluster, L.ServiceFlag.MASQUERADE
    ext = L.SCOPE_EXTERNAL
    for ip in svc.external_ips:
        out.append(make(ip, svc.port, L.ServiceFlag.EXTERNAL_IP | ext_flag, ext_eps, ext))
    ranges = sps.lb_source_allow if svc.lb_source_ranges else ()
    range_flag = L.ServiceFlag.SOURCE_RANGE if ranges else 0
    for ip in svc.lb_ips:
        out.append(make(ip, svc.port, L.ServiceFlag.LOADBALANCER | ext_flag | range_flag,
                        ext_eps, ext, ranges))
    for ip in node_ports:
        out.append(make(ip, svc.node_port, L.ServiceFlag.NODE_PORT | ext_flag, ext_eps, ext))
    return out


def cluster_ip_masquerade_families(config: NodeConfig) -> tuple[int, ...]:
    """The families in which traffic entering a node interface for a
    ClusterIP is masqueraded: kube-proxy masquerades ClusterIP traffic with
    masqueradeAll, or, with a local-traffic detector (pod CIDRs of the
    family, or a pod interface), whatever does not come from a pod; without
    a detector, nothing. Traffic arriving on a node interface is taken as
    not from a pod, whatever its source address (a pod-CIDR source there is
    a remote pod, which its own node's proxy serves)."""
    return tuple(f for f in (4, 6) if P.clusterip_masquerade(config, f) != "none")
