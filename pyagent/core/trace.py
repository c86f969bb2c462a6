"""What the node does with one new flow, from the desired state alone.

The rules are kube-proxy's (nftables mode, with the config switches of
pyagent.core.config for the iptables differences):

1. The destination is matched against ClusterIPs, externalIPs and LB IPs of
   the service ports, then against NodePorts on the addresses that serve them.
2. No usable endpoint anywhere: REJECT. Endpoints exist but the policy leaves
   none for this flow: DROP. LB source ranges are checked first (DROP).
3. ClusterIP traffic uses the iTP set and is masqueraded when it does not
   come from a pod (or always with masqueradeAll). External traffic with
   eTP=Cluster uses the cluster set, always masqueraded. With eTP=Local,
   pods are short-circuited to the cluster set unmasqueraded, the node to the
   cluster set masqueraded, and everyone else gets the local set, unmasqueraded.
   A pod reaching itself through the service (hairpin) is always masqueraded.
4. Unmatched: an unserved port of a ClusterIP is rejected, an unallocated
   address in the service CIDRs dropped, a health-check node port accepted
   (each as configured); anything else is not touched (NO_MATCH).
"""

from __future__ import annotations

from typing import Any

from pyagent.core.config import NodeConfig
from pyagent.core.model import PROTOCOLS, Endpoint
from pyagent.core.parse import IPAddress, parse_cidr, parse_ip
from pyagent.core.state import DesiredState, ServicePortState

CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER, NODE_PORT = "ClusterIP", "ExternalIP", "LB", "NodePort"


def result(verdict: str, endpoints: tuple[Endpoint, ...] = (), masquerade: bool = False
           ) -> dict[str, Any]:
    return {"verdict": verdict, "endpoints": sorted(e.addr for e in endpoints),
            "masquerade": masquerade}


class Tracer:
    """Indexes a DesiredState once, then answers any number of flows."""

    def __init__(self, state: DesiredState, config: NodeConfig) -> None:
        self.config = config
        self._vips: dict[tuple[str, str, int], tuple[str, ServicePortState]] = {}
        self._node_ports: dict[tuple[int, str, int], ServicePortState] = {}
        self._cluster_ips: set[str] = set()
        self._hc_ports: set[tuple[int, int]] = set()
        # Earlier entries win, so a ClusterIP beats an externalIP beats an LB IP.
        for kind in (CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER):
            for s in state.service_ports:
                sp = s.service
                ips = {CLUSTER_IP: (sp.cluster_ip,) if sp.cluster_ip else (),
                       EXTERNAL_IP: sp.external_ips, LOAD_BALANCER: sp.lb_ips}[kind]
                for ip in ips:
                    self._vips.setdefault((ip, sp.protocol, sp.port), (kind, s))
        for s in state.service_ports:
            sp = s.service
            if sp.cluster_ip:
                self._cluster_ips.add(sp.cluster_ip)
            if sp.node_port:
                self._node_ports.setdefault((sp.family, sp.protocol, sp.node_port), s)
            if sp.health_check_node_port:
                self._hc_ports.add((sp.family, sp.health_check_node_port))

    def trace(self, src: str, dst: str, dport: int, proto: str) -> dict[str, Any]:
        src_ip, dst_ip = parse_ip(src), parse_ip(dst)
        if src_ip is None or dst_ip is None:
            raise ValueError(f"invalid address in flow {src} -> {dst}")
        proto = proto.upper()
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r} (TCP, UDP or SCTP)")
        if src_ip.version != dst_ip.version:
            return result("NO_MATCH")
        dst_s = str(dst_ip)
        hit = self._vips.get((dst_s, proto, dport))
        if hit is not None:
            kind, s = hit
            if kind == CLUSTER_IP:
                return self._cluster_ip(s, src_ip)
            return self._external(s, src_ip, kind)
        s = self._node_ports.get((dst_ip.version, proto, dport))
        if s is not None and self.config.accepts_node_port(dst_ip):
            return self._external(s, src_ip, NODE_PORT)
        if dst_s in self._cluster_ips and self.config.reject_unknown_cluster_ip_ports:
            return result("REJECT")
        if self.config.in_service_cidrs(dst_ip):
            return result("DROP")
        if (self.config.accept_health_check_node_ports and proto == "TCP"
                and (dst_ip.version, dport) in self._hc_ports
                and self.config.is_node_local(dst_ip)):
            return result("ACCEPT")
        return result("NO_MATCH")

    def _cluster_ip(self, s: ServicePortState, src: IPAddress) -> dict[str, Any]:
        if not s.has_any_endpoints:
            return result("REJECT")
        eps = s.local_endpoints if s.service.internal_policy_local else s.cluster_endpoints
        if not eps:
            return result("DROP")
        cfg = self.config
        masq = cfg.masquerade_all or (cfg.has_local_detector(src.version) and not cfg.is_pod(src))
        return _dnat(eps, src, masq)

    def _external(self, s: ServicePortState, src: IPAddress, kind: str) -> dict[str, Any]:
        if kind == LOAD_BALANCER and s.lb_source_allow and not any(
                src in parse_cidr(c) for c in s.lb_source_allow):
            return result("DROP")
        if not s.has_any_endpoints:
            return result("REJECT")
        if not s.service.external_policy_local:
            eps, masq = s.cluster_endpoints, True
        elif self.config.is_pod(src):
            eps, masq = s.cluster_endpoints, False  # short-circuit, as if via the LB
        elif self.config.is_node_local(src):
            eps, masq = s.cluster_endpoints, True
        else:
            eps, masq = s.local_endpoints, False  # keeps the client's source address
        if not eps:
            return result("DROP")
        return _dnat(eps, src, masq)


def _dnat(eps: tuple[Endpoint, ...], src: IPAddress, masq: bool) -> dict[str, Any]:
    # Hairpin: an endpoint reaching its own service must see a different source.
    hairpin = any(e.ip == str(src) for e in eps)
    return result("DNAT", eps, masq or hairpin)


def trace(state: DesiredState, config: NodeConfig, src: str, dst: str, dport: int,
          proto: str) -> dict[str, Any]:
    """{"verdict", "endpoints" (sorted ip:port), "masquerade"} for one new flow."""
    return Tracer(state, config).trace(src, dst, dport, proto)
