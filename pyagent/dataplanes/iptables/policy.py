"""trace.py's verdict rules cut into the pieces a rule-based dataplane writes.

Shared by the iptables, nftables, userspace and IPVS modes, so every mode
decides the same way as `pyagent trace` (pure; no kernel access):

- ClusterIP traffic: the iTP set; no endpoints anywhere: REJECT; endpoints
  elsewhere but none in the set: DROP (source independent). Masquerade when
  the source is not a pod (or always with masqueradeAll).
- External traffic (externalIPs, LB IPs, NodePorts on the addresses that
  serve them): LB source ranges first (DROP), then REJECT without endpoints,
  then eTP=Cluster: cluster set, masqueraded; eTP=Local: pods to the cluster
  set unmasqueraded, node-local sources to the cluster set masqueraded, the
  rest to the local set (DROP when it is empty).
- Hairpin (an endpoint reaching its own service) is masqueraded.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.text import short_hash

CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER, NODE_PORT = "ClusterIP", "ExternalIP", "LB", "NodePort"
REJECT, DROP, DNAT = "REJECT", "DROP", "DNAT"


def port_id(sps: ServicePortState) -> str:
    return short_hash(*sps.key)


def endpoint_id(sps: ServicePortState, ep: Endpoint) -> str:
    return short_hash(*sps.key, ep.addr)


def cluster_ip_set(sps: ServicePortState) -> tuple[Endpoint, ...]:
    """The endpoints ClusterIP traffic may go to (iTP decides)."""
    eps = sps.local_endpoints if sps.service.internal_policy_local else sps.cluster_endpoints
    return tuple(eps or ())


def cluster_ip_verdict(sps: ServicePortState) -> str:
    if not sps.has_any_endpoints:
        return REJECT
    return DNAT if cluster_ip_set(sps) else DROP


def cluster_set(sps: ServicePortState) -> tuple[Endpoint, ...]:
    return tuple(sps.cluster_endpoints or ())


def local_set(sps: ServicePortState) -> tuple[Endpoint, ...]:
    return tuple(sps.local_endpoints or ())


@dataclass(frozen=True)
class ExternalVIP:
    kind: str  # EXTERNAL_IP, LOAD_BALANCER or NODE_PORT
    ip: str
    port: int
    source_allow: tuple[str, ...] = ()  # LB only; empty: any source


def external_vips(sps: ServicePortState, config: NodeConfig) -> list[ExternalVIP]:
    """Every external frontend of one service port on this node.

    A ClusterIP that is also an external IP keeps ClusterIP behaviour
    (trace.py resolves ClusterIP first), so such duplicates are left out.
    """
    sp = sps.service
    out: list[ExternalVIP] = []
    seen = {sp.cluster_ip}
    for ip in sp.external_ips:
        if ip not in seen:
            seen.add(ip)
            out.append(ExternalVIP(EXTERNAL_IP, ip, sp.port))
    for ip in sp.lb_ips:
        if ip not in seen:
            seen.add(ip)
            out.append(ExternalVIP(LOAD_BALANCER, ip, sp.port, sps.lb_source_allow))
    if sp.node_port:
        for ip in config.node_port_ips(sp.family):
            out.append(ExternalVIP(NODE_PORT, ip, sp.node_port))
    return out


def pod_cidrs(config: NodeConfig, family: int) -> tuple[str, ...]:
    return tuple(c for c in config.cluster_cidrs if (":" in c) == (family == 6))


def pod_interface(config: NodeConfig) -> str:
    """kube-proxy's interface-based local traffic detectors (detectLocalMode
    InterfaceNamePrefix: "prefix+", BridgeInterface: the bridge): pods are
    what comes in through it. Empty for the CIDR-based ones."""
    if config.local_detect_mode in ("InterfaceNamePrefix", "BridgeInterface"):
        return config.local_interface
    return ""


def has_pod_detector(config: NodeConfig, family: int) -> bool:
    return bool(pod_cidrs(config, family) or pod_interface(config))


def clusterip_masquerade(config: NodeConfig, family: int) -> str:
    """'all', 'non-pod' or 'none': which ClusterIP sources are masqueraded."""
    if config.masquerade_all:
        return "all"
    return "non-pod" if has_pod_detector(config, family) else "none"


def loopback(family: int) -> str:
    return "::1/128" if family == 6 else "127.0.0.0/8"


def node_local_sources(config: NodeConfig, family: int) -> tuple[str, ...]:
    """Sources trace.py treats as the node itself: its addresses and loopback."""
    bits = 128 if family == 6 else 32
    ips = [f"{ip}/{bits}" for ip in config.node_ips if (":" in ip) == (family == 6)]
    return (*dict.fromkeys(ips), loopback(family))
