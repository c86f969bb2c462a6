"""Node configuration: what the node is, and what the rules mean on it.

`load_config` reads a KubeProxyConfiguration-style YAML file (every key
optional) plus pyagent's own `pyagent:` block. The trace spellings of
DESIGN.md section 5 are accepted too (nodeName, nodeIPs, clusterCIDRs,
localDetector), and so are the conformance vectors' proxier settings
(nodeIP, serviceCIDR, interface_ips, ...), so one loader serves `run`,
`plan` and `trace`.

Defaults follow kube-proxy's nftables mode. A few switches exist so the same
rules can also describe the iptables mode where the two differ:
`localhostNodePorts` (iptables only, IPv4), `rejectUnknownClusterIPPorts`
(nftables rejects a ClusterIP's unserved ports, iptables ignores them),
`acceptHealthCheckNodePorts` (iptables ACCEPTs them explicitly) and
`serviceCIDRs` (nftables drops traffic to unallocated addresses in them).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pyagent.inputs import ParseLimits, load_single
from pyagent.parse import ZONE_LABEL, IPAddress, IPNetwork, parse_cidr, parse_ip

PREFER_SAME_NODE_GATE = "PreferSameTrafficDistribution"
LB_IP_MODE_GATE = "LoadBalancerIPMode"


@dataclass(frozen=True)
class NodeConfig:
    node_name: str = ""
    node_ips: tuple[str, ...] = ()  # addresses local to the node; the first is primary
    cluster_cidrs: tuple[str, ...] = ()  # pod CIDRs; empty: no local-traffic detector
    node_port_addresses: tuple[str, ...] = ()  # CIDRs; none of a family: every node IP
    masquerade_all: bool = False
    prefer_same_node: bool = False  # feature gate PreferSameTrafficDistribution
    node_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    mode: str = "ebpf"
    bpffs: str = "/sys/fs/bpf/pyagent"
    cgroup: str | None = None  # None: the root of the cgroup2 mount
    interfaces: tuple[str, ...] = ()
    # TC hooks on the pod side (the pod bridge, or each pod's host veth)
    pod_interfaces: tuple[str, ...] = ()
    # eBPF backend choice when a Service has no pyagent.io/lb-algorithm annotation
    lb_algorithm: str = "random"
    ipvs_scheduler: str = "rr"  # KubeProxyConfiguration ipvs.scheduler
    service_cidrs: tuple[str, ...] = ()
    localhost_node_ports: bool = False
    reject_unknown_cluster_ip_ports: bool = True
    accept_health_check_node_ports: bool = False
    honour_lb_ip_mode: bool = True  # feature gate LoadBalancerIPMode
    feature_gates: Mapping[str, bool] = field(default_factory=dict, hash=False)
    parse_limits: ParseLimits = ParseLimits()  # pyagent.parseLimits: input file bounds

    @property
    def zone(self) -> str:
        return self.node_labels.get(ZONE_LABEL, "")

    # --- address predicates (parsed once per config) ---------------------------

    @cached_property
    def _pod_nets(self) -> tuple[IPNetwork, ...]:
        return _nets(self.cluster_cidrs)

    @cached_property
    def _service_nets(self) -> tuple[IPNetwork, ...]:
        return _nets(self.service_cidrs)

    @cached_property
    def _node_addrs(self) -> tuple[IPAddress, ...]:
        return tuple(a for a in (parse_ip(ip) for ip in self.node_ips) if a is not None)

    @cached_property
    def _node_ip_set(self) -> frozenset[str]:
        return frozenset(str(a) for a in self._node_addrs)

    @cached_property
    def _node_port_nets(self) -> tuple[IPNetwork, ...]:
        return _nets(self.node_port_addresses)

    def is_pod(self, ip: IPAddress) -> bool:
        """Whether the local-traffic detector classifies `ip` as a pod."""
        return any(ip in n for n in self._pod_nets if n.version == ip.version)

    def has_local_detector(self, family: int) -> bool:
        return any(n.version == family for n in self._pod_nets)

    def is_node_local(self, ip: IPAddress) -> bool:
        return ip.is_loopback or str(ip) in self._node_ip_set

    def in_service_cidrs(self, ip: IPAddress) -> bool:
        return any(ip in n for n in self._service_nets if n.version == ip.version)

    def primary_node_ip(self, family: int) -> IPAddress | None:
        return next((a for a in self._node_addrs if a.version == family), None)

    def accepts_node_port(self, ip: IPAddress) -> bool:
        """Whether NodePorts are served on destination `ip`."""
        nets = [n for n in self._node_port_nets if n.version == ip.version]
        in_nets = not nets or any(ip in n for n in nets)
        if ip.is_loopback:
            # Only iptables mode has localhost NodePorts, and only for IPv4.
            return self.localhost_node_ports and ip.version == 4 and in_nets
        return str(ip) in self._node_ip_set and in_nets

    def node_port_ips(self, family: int) -> tuple[str, ...]:
        """The node addresses (loopback excluded) that serve NodePorts."""
        return tuple(str(a) for a in self._node_addrs
                     if a.version == family and not a.is_loopback and self.accepts_node_port(a))


def _nets(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(n for n in (parse_cidr(c) for c in cidrs) if n is not None)


def with_overrides(config: NodeConfig, **changes: Any) -> NodeConfig:
    """`config` with the given fields replaced; None values are ignored (unset flags)."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


# --- loading -------------------------------------------------------------------

# KubeProxyConfiguration keys that pyagent accepts and ignores.
_IGNORED_KEYS = frozenset({
    "apiVersion", "kind", "bindAddress", "bindAddressHardFail", "clientConnection",
    "configSyncPeriod", "conntrack", "detectLocal", "detectLocalMode", "enableProfiling",
    "ipvs", "linux", "logging", "nftables", "oomScoreAdj", "portRange",
    "showHiddenMetricsForVersion", "udpIdleTimeout", "windowsRunAsService", "winkernel",
    "masqueradeMark",  # the conformance vectors' proxier settings carry it
})
_PYAGENT_KEYS = frozenset({
    "nodeIPs", "bpffs", "cgroup", "interfaces", "serviceCIDRs", "localhostNodePorts",
    "rejectUnknownClusterIPPorts", "acceptHealthCheckNodePorts", "lbAlgorithm", "podInterfaces",
    "parseLimits",
})
LB_ALGORITHMS = ("random", "round-robin", "least-conn", "maglev")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def load_config(path: Path | None) -> NodeConfig:
    """Read a config file; None gives the defaults. Raises ValueError naming the bad key."""
    if path is None:
        return NodeConfig()
    data = load_single(Path(path))  # bounded; ValueError (ParseError) naming the file
    if data is None:
        return NodeConfig()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_from_dict(data: Mapping[str, Any]) -> NodeConfig:
    known = _IGNORED_KEYS | {
        "hostnameOverride", "nodeName", "nodeIP", "nodeIPs", "clusterCIDR", "clusterCIDRs",
        "localDetector", "nodePortAddresses", "masqueradeAll", "featureGates", "syncPeriod",
        "minSyncPeriod", "healthzBindAddress", "metricsBindAddress", "mode", "iptables",
        "serviceCIDRs", "pyagent",
        # Spellings of the conformance vectors' proxier settings.
        "serviceCIDR", "interface_ips", "tracer_local_ips", "localhostNodePorts",
    }
    for key in data:
        if key not in known:
            raise ValueError(f"unknown key {key!r}")
    py = _mapping(data, "pyagent")
    for key in py:
        if key not in _PYAGENT_KEYS:
            raise ValueError(f"unknown key 'pyagent.{key}'")
    ipt = _mapping(data, "iptables")
    gates = {str(k): _boolean(v, f"featureGates.{k}")
             for k, v in _mapping(data, "featureGates").items()}

    node_ips = [ip for key in ("nodeIP", "nodeIPs", "interface_ips", "tracer_local_ips")
                for ip in _ips(data, key)] + _ips(py, "nodeIPs", "pyagent.")
    masq = data.get("masqueradeAll", ipt.get("masqueradeAll"))
    values: dict[str, Any] = {
        "node_name": _string(data, "hostnameOverride") or _string(data, "nodeName"),
        "node_ips": tuple(dict.fromkeys(node_ips)),
        "cluster_cidrs": _pod_cidrs(data),
        "node_port_addresses": _node_port_addresses(data, node_ips),
        "masquerade_all": _boolean(masq, "masqueradeAll") if masq is not None else False,
        "prefer_same_node": gates.get(PREFER_SAME_NODE_GATE, False),
        "honour_lb_ip_mode": gates.get(LB_IP_MODE_GATE, True),
        "feature_gates": gates,
        "service_cidrs": (_cidrs(data, "serviceCIDR") + _cidrs(data, "serviceCIDRs")
                          + _cidrs(py, "serviceCIDRs", "pyagent.")),
        "interfaces": tuple(_strings(py, "interfaces", "pyagent.")),
        "pod_interfaces": tuple(_strings(py, "podInterfaces", "pyagent.")),
        "parse_limits": ParseLimits.from_dict(py.get("parseLimits")),
    }
    for key, attr, parse in (
        ("syncPeriod", "sync_period", _duration),
        ("minSyncPeriod", "min_sync_period", _duration),
        ("healthzBindAddress", "healthz_bind_address", _string_value),
        ("metricsBindAddress", "metrics_bind_address", _string_value),
        ("mode", "mode", _string_value),
    ):
        if data.get(key) not in (None, ""):
            values[attr] = parse(data[key], key)
    for key, attr in (("bpffs", "bpffs"), ("cgroup", "cgroup"), ("lbAlgorithm", "lb_algorithm")):
        if py.get(key) not in (None, ""):
            values[attr] = _string_value(py[key], f"pyagent.{key}")
    if values.get("lb_algorithm", "random") not in LB_ALGORITHMS:
        raise ValueError(f"pyagent.lbAlgorithm: {values['lb_algorithm']!r} is not one of "
                         f"{', '.join(LB_ALGORITHMS)}")
    ipvs = _mapping(data, "ipvs")
    if ipvs.get("scheduler") not in (None, ""):
        values["ipvs_scheduler"] = _string_value(ipvs["scheduler"], "ipvs.scheduler")
    for src, prefix, key, attr in (
        (data, "", "localhostNodePorts", "localhost_node_ports"),
        (ipt, "iptables.", "localhostNodePorts", "localhost_node_ports"),
        (py, "pyagent.", "localhostNodePorts", "localhost_node_ports"),
        (py, "pyagent.", "rejectUnknownClusterIPPorts", "reject_unknown_cluster_ip_ports"),
        (py, "pyagent.", "acceptHealthCheckNodePorts", "accept_health_check_node_ports"),
    ):
        if src.get(key) is not None:
            values[attr] = _boolean(src[key], prefix + key)
    return NodeConfig(**values)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: expected a mapping")
    return value


def _string_value(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


def _string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return "" if value is None else _string_value(value, key)


def _boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    return value


def _strings(data: Mapping[str, Any], key: str, prefix: str = "") -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{prefix}{key}: expected a list of strings")
    return [v.strip() for v in value]


def _ips(data: Mapping[str, Any], key: str, prefix: str = "") -> list[str]:
    out = []
    for text in _strings(data, key, prefix):
        addr = parse_ip(text)
        if addr is None:
            raise ValueError(f"{prefix}{key}: invalid IP address {text!r}")
        out.append(str(addr))
    return out


def _cidrs(data: Mapping[str, Any], key: str, prefix: str = "") -> tuple[str, ...]:
    out = []
    for text in _strings(data, key, prefix):
        net = parse_cidr(text)
        if net is None:
            raise ValueError(f"{prefix}{key}: invalid CIDR {text!r}")
        out.append(str(net))
    return tuple(out)


def _pod_cidrs(data: Mapping[str, Any]) -> tuple[str, ...]:
    cidrs = _cidrs(data, "clusterCIDR") + _cidrs(data, "clusterCIDRs")
    raw = data.get("localDetector")
    if isinstance(raw, str):  # "none", or the pod CIDR itself
        raw = {"mode": "none"} if raw == "none" else {"mode": "cidr", "cidr": raw}
    detector = _mapping({"localDetector": raw}, "localDetector")
    mode = detector.get("mode", "cidr" if detector else None)
    if mode == "none":
        return ()
    if mode not in (None, "cidr"):
        raise ValueError(f"localDetector.mode: expected cidr or none, got {mode!r}")
    return tuple(dict.fromkeys(cidrs + _cidrs(detector, "cidr", "localDetector.")))


def _node_port_addresses(data: Mapping[str, Any], node_ips: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for text in _strings(data, "nodePortAddresses"):
        if text == "primary":  # kube-proxy's spelling for the primary IP of each family
            for family in (4, 6):
                ip = next((a for a in map(parse_ip, node_ips) if a and a.version == family), None)
                if ip is not None:
                    out.append(f"{ip}/{ip.max_prefixlen}")
            continue
        net = parse_cidr(text)
        if net is None:
            raise ValueError(f"nodePortAddresses: invalid CIDR {text!r}")
        out.append(str(net))
    return tuple(dict.fromkeys(out))


def _duration(value: object, key: str) -> float:
    """Seconds from a Go duration ("30s", "1m30s", "500ms") or a plain number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"{key}: invalid duration {value!r} (e.g. 30s, 1m, 500ms)")
