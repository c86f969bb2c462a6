"""The proxy's view of Services and endpoints: small frozen values.

One ServicePort exists per (service, port, IP family), as kube-proxy runs one
proxier per family. Every address here is already normalised (see
pyagent.core.parse), so string equality is address equality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ServiceKey = tuple[str, str]  # (namespace, name)
Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[str, ...] = ("TCP", "UDP", "SCTP")
# The one protocol table: names as Kubernetes spells them, IANA numbers.
PROTOCOL_NUMBERS: dict[str, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES: dict[int, str] = {n: p for p, n in PROTOCOL_NUMBERS.items()}

# (namespace, name, port_name, protocol, family): identifies a ServicePort.
ServicePortKey = tuple[str, str, str, str, int]


def join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone_hints: frozenset[str] = frozenset()
    node_hints: frozenset[str] = frozenset()
    is_local: bool = False  # node_name is the node this state was computed for

    @property
    def addr(self) -> str:
        return join_host_port(self.ip, self.port)

    @property
    def usable(self) -> bool:
        """Ready, or serving-and-terminating (the fallback kind)."""
        return self.ready or (self.serving and self.terminating)

    @staticmethod
    def make(ip: str, port: int, ready: bool, serving: bool, terminating: bool,
             node_name: str | None, zone_hints: frozenset[str], node_hints: frozenset[str],
             is_local: bool) -> Endpoint:
        """Endpoint(...) with every field given, twice as fast: the parser
        makes one per endpoint (100k+), and a frozen dataclass's __init__
        sets each field through object.__setattr__. The slots are set
        through their descriptors instead, which frozen does not guard."""
        ep = _new_object(Endpoint)
        _EP_IP(ep, ip)
        _EP_PORT(ep, port)
        _EP_READY(ep, ready)
        _EP_SERVING(ep, serving)
        _EP_TERMINATING(ep, terminating)
        _EP_NODE(ep, node_name)
        _EP_ZONES(ep, zone_hints)
        _EP_NODES(ep, node_hints)
        _EP_LOCAL(ep, is_local)
        return ep


_new_object = object.__new__
(_EP_IP, _EP_PORT, _EP_READY, _EP_SERVING, _EP_TERMINATING, _EP_NODE, _EP_ZONES, _EP_NODES,
 _EP_LOCAL) = (getattr(Endpoint, f).__set__ for f in (
    "ip", "port", "ready", "serving", "terminating", "node_name", "zone_hints", "node_hints",
    "is_local"))


@dataclass(frozen=True, slots=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str
    port: int
    family: int  # 4 or 6
    cluster_ip: str | None
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()  # ingress IPs of this family; ipMode Proxy left out
    lb_source_ranges: tuple[str, ...] = ()  # CIDRs of this family
    external_policy_local: bool = False  # the API helper ExternalPolicyLocal
    internal_policy_local: bool = False
    health_check_node_port: int = 0  # only for type LoadBalancer with eTP=Local
    affinity_timeout: int | None = None  # None: no ClientIP affinity
    service_type: str = "ClusterIP"
    traffic_distribution: str | None = None
    lb_algorithm: str | None = None  # annotation pyagent.io/lb-algorithm
    # metadata.creationTimestamp (epoch seconds; None when absent): when the
    # eBPF maps are full, older Services are programmed first
    created: float | None = None

    @property
    def key(self) -> ServicePortKey:
        return (self.namespace, self.name, self.port_name, self.protocol, self.family)

    @property
    def service_key(self) -> ServiceKey:
        return (self.namespace, self.name)

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.lb_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # eTP=Local still needs them: pods and the node are short-circuited.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (
            self.external_policy_local and self.externally_accessible)

    def __str__(self) -> str:
        port = f":{self.port_name}" if self.port_name else ""
        return f"{self.namespace}/{self.name}{port}/{self.protocol}"
