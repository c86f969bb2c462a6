"""Node configuration: what the node is, and what the rules mean on it.

`load_config` reads a KubeProxyConfiguration-style YAML file (every key
optional) plus pyagent's own `pyagent:` block. The trace command's
spellings are accepted too (nodeName, nodeIPs, clusterCIDRs, localDetector),
and so are the conformance vectors' proxier settings (nodeIP, serviceCIDR,
interface_ips, ...), so one loader serves `run`, `plan` and `trace`.

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

from pyagent.core.inputs import ParseLimits, load_single
from pyagent.core.kube_proxy_keys import HONOURED as _HONOURED
from pyagent.core.kube_proxy_keys import IGNORED
from pyagent.core.parse import ZONE_LABEL, IPAddress, IPNetwork, parse_cidr, parse_ip

PREFER_SAME_NODE_GATE = "PreferSameTrafficDistribution"
LB_IP_MODE_GATE = "LoadBalancerIPMode"


DEFAULT_BPFFS = "/sys/fs/bpf/pyagent"  # production's pin directory


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
    metrics_per_backend: bool = False  # pyagent_backend_new_connections_total (big)
    mode: str = "ebpf"
    bpffs: str = DEFAULT_BPFFS
    cgroup: str | None = None  # None: the root of the cgroup2 mount
    interfaces: tuple[str, ...] = ()
    # TC hooks on the pod side (the pod bridge, or each pod's host veth)
    pod_interfaces: tuple[str, ...] = ()
    # the socket LB translates only the host namespace's sockets; pods' go
    # by TC on pod_interfaces (Cilium's socketLB.hostNamespaceOnly)
    socket_lb_host_ns_only: bool = False
    # north-south to other nodes' backends: snat, dsr or hybrid (DSR for TCP
    # only), Cilium's bpf-lb-mode
    bpf_lb_mode: str = "snat"
    # XDP in front of TC on the node interfaces: disabled, native, generic
    # or best-effort (native, else generic), Cilium's bpf-lb-acceleration;
    # wherever XDP cannot run, TC serves alone (dataplanes/ebpf/accel.py)
    bpf_lb_acceleration: str = "disabled"
    # eBPF backend choice when a Service has no pyagent.io/lb-algorithm annotation
    lb_algorithm: str = "random"
    # entries of each eBPF map holding Service state (Cilium's bpf-lb-map-max);
    # None: bpf_src/lb_types.h's defaults. See dataplanes/ebpf/capacity.py.
    bpf_lb_map_max: int | None = None
    # rev-NAT entries, and with them the rev-NAT (frontend) ids and the
    # per-CPU per-service arrays they index (Cilium's bpf-lb-rev-nat-map-max);
    # None: min(bpf_lb_map_max, 65536), else the header's.
    bpf_lb_rev_nat_map_max: int | None = None
    ipvs_scheduler: str = "rr"  # KubeProxyConfiguration ipvs.scheduler
    service_cidrs: tuple[str, ...] = ()
    localhost_node_ports: bool = False
    reject_unknown_cluster_ip_ports: bool = True
    accept_health_check_node_ports: bool = False
    honour_lb_ip_mode: bool = True  # feature gate LoadBalancerIPMode
    feature_gates: Mapping[str, bool] = field(default_factory=dict, hash=False)
    parse_limits: ParseLimits = ParseLimits()  # pyagent.parseLimits: input file bounds
    # kube-proxy's detectLocalMode: ClusterCIDR (cluster_cidrs), NodeCIDR (the
    # Node's podCIDRs, resolved into cluster_cidrs at start), InterfaceNamePrefix
    # or BridgeInterface (local_interface: a prefix ending in "+", or a bridge).
    local_detect_mode: str = "ClusterCIDR"
    local_interface: str = ""
    # nodePortAddresses keywords: "primary" (the primary node IP of each family)
    node_port_primary: bool = False
    kubeconfig: str | None = None  # clientConnection.kubeconfig
    api_server: str | None = None  # --master / pyagent.k8sServiceHost+Port: overrides the host
    bind_address: str = ""  # kube-proxy's bindAddress: the primary node IP when not 0.0.0.0/::
    oom_score_adj: int | None = None
    log_verbosity: int | None = None  # logging.verbosity / --v
    # What the file said that pyagent does not act on (or acts on differently),
    # one line each, logged by `pyagent run`.
    notes: tuple[str, ...] = field(default=(), compare=False)

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
        # "primary" is the primary node IP of each family (kube-proxy expands
        # it the same way, into one host CIDR per family).
        primary = tuple(f"{a}/{a.max_prefixlen}" for a in (self.primary_node_ip(4),
                                                           self.primary_node_ip(6)) if a)
        return _nets(self.node_port_addresses + (primary if self.node_port_primary else ()))

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

KUBE_PROXY_API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KUBE_PROXY_KIND = "KubeProxyConfiguration"
LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "InterfaceNamePrefix", "BridgeInterface")

_PYAGENT_KEYS = frozenset({
    "nodeIPs", "bpffs", "cgroup", "interfaces", "serviceCIDRs", "localhostNodePorts",
    "rejectUnknownClusterIPPorts", "acceptHealthCheckNodePorts", "lbAlgorithm", "podInterfaces",
    "parseLimits", "bpfLbMapMax", "bpfLbRevNatMapMax", "socketLBHostNamespaceOnly",
    "bpfLbMode", "bpfLbAcceleration",
    "k8sServiceHost", "k8sServicePort",
})
LB_MAP_MAX_RANGE = (1, 1 << 24)
LB_MODES = ("snat", "dsr", "hybrid")
LB_ACCELERATIONS = ("disabled", "native", "generic", "best-effort")
LB_ALGORITHMS = ("random", "round-robin", "least-conn", "maglev")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def load_config(path: Path | None, mode: str | None = None) -> NodeConfig:
    """Read a config file; None gives the defaults. Raises ValueError naming the
    file and the bad key. `mode` (a --mode flag) picks the per-mode blocks."""
    if path is None:
        return NodeConfig() if mode is None else NodeConfig(mode=mode)
    data = load_single(Path(path))  # bounded; ValueError (ParseError) naming the file
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(data, mode)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _check_keys(data: Mapping[str, Any], block: str) -> None:
    prefix = f"{block}." if block else ""
    known = _HONOURED.get(block, set())
    for key in data:
        if key not in known and f"{prefix}{key}" not in IGNORED:
            raise ValueError(f"unknown key {prefix}{key!r}" if block else f"unknown key {key!r}")


def _zero(value: object) -> bool:
    """A value that sets nothing (kubeadm writes every key, most with one)."""
    if isinstance(value, Mapping):
        return all(_zero(v) for v in value.values())
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value == 0
    return value in (None, "", "0", "0s", [])


def ignored_notes(data: Mapping[str, Any]) -> list[str]:
    """One line per reason for the ignored keys that `data` sets."""
    by_reason: dict[str, list[str]] = {}
    for dotted, reason in IGNORED.items():
        block, _, key = dotted.rpartition(".")
        src = data.get(block) if block else data
        if isinstance(src, Mapping) and key in src and not _zero(src[key]):
            value = src[key]
            shown = dotted if isinstance(value, Mapping) else f"{dotted}={value}"
            by_reason.setdefault(reason, []).append(shown)
    return [f"ignored {', '.join(keys)}: {why}" for why, keys in by_reason.items()]


def config_from_dict(data: Mapping[str, Any], mode: str | None = None) -> NodeConfig:
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if kind is not None and kind != KUBE_PROXY_KIND:
        raise ValueError(f"kind: expected {KUBE_PROXY_KIND}, got {kind!r}")
    if api_version is not None and api_version != KUBE_PROXY_API_VERSION:
        raise ValueError(f"apiVersion: expected {KUBE_PROXY_API_VERSION} (the version "
                         f"kube-proxy reads from files), got {api_version!r}")
    _check_keys(data, "")
    for block in ("clientConnection", "iptables", "ipvs", "nftables", "detectLocal", "logging",
                  "linux"):
        _check_keys(_mapping(data, block), block)
    py = _mapping(data, "pyagent")
    for key in py:
        if key not in _PYAGENT_KEYS:
            raise ValueError(f"unknown key 'pyagent.{key}'")
    notes = ignored_notes(data)
    ipt = _mapping(data, "iptables")
    linux = _mapping(data, "linux")
    gates = {str(k): _boolean(v, f"featureGates.{k}")
             for k, v in _mapping(data, "featureGates").items()}

    file_mode = _string(data, "mode")
    if mode is None:
        mode = file_mode or "ebpf"
        if not file_mode and ("kind" in data or "mode" in data):
            notes.append("mode unset: pyagent's default ebpf (kube-proxy would use iptables)")
    block = {"nftables": "nftables", "ipvs": "ipvs"}.get(mode, "iptables")
    periods = _mapping(data, block)

    node_ips = [ip for key in ("nodeIP", "nodeIPs", "interface_ips", "tracer_local_ips")
                for ip in _ips(data, key)] + _ips(py, "nodeIPs", "pyagent.")
    masq = [v for v in (data.get("masqueradeAll"), linux.get("masqueradeAll"),
                        periods.get("masqueradeAll") if block != "ipvs" else
                        ipt.get("masqueradeAll")) if v is not None]
    npa, primary = _node_port_addresses(data)
    local_mode, cluster_cidrs, local_if, more = _local_detector(data)
    notes += more
    values: dict[str, Any] = {
        "node_name": _string(data, "hostnameOverride").strip().lower() or _string(data, "nodeName"),
        "node_ips": tuple(dict.fromkeys(node_ips)),
        "cluster_cidrs": cluster_cidrs,
        "local_detect_mode": local_mode,
        "local_interface": local_if,
        "node_port_addresses": npa,
        "node_port_primary": primary,
        "masquerade_all": any(_boolean(v, "masqueradeAll") for v in masq),
        "prefer_same_node": gates.get(PREFER_SAME_NODE_GATE, False),
        "honour_lb_ip_mode": gates.get(LB_IP_MODE_GATE, True),
        "feature_gates": gates,
        "service_cidrs": (_cidrs(data, "serviceCIDR") + _cidrs(data, "serviceCIDRs")
                          + _cidrs(py, "serviceCIDRs", "pyagent.")),
        "interfaces": tuple(_strings(py, "interfaces", "pyagent.")),
        "pod_interfaces": tuple(_strings(py, "podInterfaces", "pyagent.")),
        "parse_limits": ParseLimits.from_dict(py.get("parseLimits")),
        "mode": mode,
        "kubeconfig": _string(_mapping(data, "clientConnection"), "kubeconfig") or None,
        "bind_address": _bind_address(data),
        "api_server": _api_server(py),
    }
    values.update(_sync_periods(data, block, periods, notes))
    for key, attr, default_port in (("healthzBindAddress", "healthz_bind_address", 10256),
                                    ("metricsBindAddress", "metrics_bind_address", 10249)):
        if data.get(key) not in (None, ""):
            values[attr] = with_default_port(_string_value(data[key], key), default_port)
    for key, attr in (("bpffs", "bpffs"), ("cgroup", "cgroup"), ("lbAlgorithm", "lb_algorithm")):
        if py.get(key) not in (None, ""):
            values[attr] = _string_value(py[key], f"pyagent.{key}")
    if py.get("bpfLbMode") not in (None, ""):
        values["bpf_lb_mode"] = lb_mode(py["bpfLbMode"], "pyagent.bpfLbMode")
    if py.get("bpfLbAcceleration") not in (None, ""):
        values["bpf_lb_acceleration"] = lb_acceleration(py["bpfLbAcceleration"],
                                                        "pyagent.bpfLbAcceleration")
    if values.get("lb_algorithm", "random") not in LB_ALGORITHMS:
        raise ValueError(f"pyagent.lbAlgorithm: {values['lb_algorithm']!r} is not one of "
                         f"{', '.join(LB_ALGORITHMS)}")
    if py.get("bpfLbMapMax") is not None:
        values["bpf_lb_map_max"] = lb_map_max(py["bpfLbMapMax"], "pyagent.bpfLbMapMax")
    if py.get("bpfLbRevNatMapMax") is not None:
        values["bpf_lb_rev_nat_map_max"] = lb_map_max(py["bpfLbRevNatMapMax"],
                                                      "pyagent.bpfLbRevNatMapMax")
    ipvs = _mapping(data, "ipvs")
    if ipvs.get("scheduler") not in (None, ""):
        values["ipvs_scheduler"] = _string_value(ipvs["scheduler"], "ipvs.scheduler")
    for src, prefix, key in ((data, "", "oomScoreAdj"), (linux, "linux.", "oomScoreAdj")):
        if src.get(key) is not None:
            values["oom_score_adj"] = oom_score_adj(src[key], prefix + key)
    verbosity = _mapping(data, "logging").get("verbosity")
    if verbosity is not None:
        if not isinstance(verbosity, int) or isinstance(verbosity, bool) or verbosity < 0:
            raise ValueError(f"logging.verbosity: expected a number >= 0, got {verbosity!r}")
        values["log_verbosity"] = verbosity
    for src, prefix, key, attr in (
        (data, "", "localhostNodePorts", "localhost_node_ports"),
        (ipt, "iptables.", "localhostNodePorts", "localhost_node_ports"),
        (py, "pyagent.", "localhostNodePorts", "localhost_node_ports"),
        (py, "pyagent.", "rejectUnknownClusterIPPorts", "reject_unknown_cluster_ip_ports"),
        (py, "pyagent.", "acceptHealthCheckNodePorts", "accept_health_check_node_ports"),
        (py, "pyagent.", "socketLBHostNamespaceOnly", "socket_lb_host_ns_only"),
    ):
        if src.get(key) is not None:
            values[attr] = _boolean(src[key], prefix + key)
    values["notes"] = tuple(notes)
    return NodeConfig(**values)


def _sync_periods(data: Mapping[str, Any], block: str, periods: Mapping[str, Any],
                  notes: list[str]) -> dict[str, float]:
    """syncPeriod / minSyncPeriod: pyagent's top-level keys win; else the block
    of the mode (kube-proxy's v1alpha1 has only those: iptables.* for the
    iptables mode and any mode that is not nftables or ipvs). Zero means
    kube-proxy's default there: 30 s, and 1 s for the iptables and nftables
    minimum (ipvs keeps 0: sync at once)."""
    out: dict[str, float] = {}
    for key, attr in (("syncPeriod", "sync_period"), ("minSyncPeriod", "min_sync_period")):
        if data.get(key) not in (None, ""):
            out[attr] = _duration(data[key], key)
            continue
        if periods.get(key) in (None, ""):
            continue
        value = _duration(periods[key], f"{block}.{key}")
        if value or (key == "minSyncPeriod" and block == "ipvs"):
            out[attr] = value
    for other in ("iptables", "ipvs", "nftables"):
        if other == block:
            continue
        for key in ("syncPeriod", "minSyncPeriod"):
            value = _mapping(data, other).get(key)
            if not _zero(value):
                notes.append(f"{other}.{key}={value} not used: the mode reads {block}.{key}")
    return out


def _local_detector(data: Mapping[str, Any]) -> tuple[str, tuple[str, ...], str, list[str]]:
    """(detectLocalMode, pod CIDRs, interface match, notes)."""
    mode = _string(data, "detectLocalMode") or "ClusterCIDR"
    if mode not in LOCAL_MODES:
        raise ValueError(f"detectLocalMode: {mode!r} is not one of {', '.join(LOCAL_MODES)}")
    notes = []
    if mode == "ClusterCIDR":
        return mode, _pod_cidrs(data), "", notes
    if data.get("clusterCIDR") not in (None, ""):
        notes.append(f"clusterCIDR not used: detectLocalMode is {mode}")
    detect = _mapping(data, "detectLocal")
    if mode == "NodeCIDR":
        return mode, (), "", notes  # the Node's podCIDRs, filled in at start
    key = "interfaceNamePrefix" if mode == "InterfaceNamePrefix" else "bridgeInterface"
    name = _string(detect, key).strip()
    if not name:
        raise ValueError(f"detectLocal.{key}: required with detectLocalMode {mode}")
    return mode, (), name + "+" if mode == "InterfaceNamePrefix" else name, notes


def _bind_address(data: Mapping[str, Any]) -> str:
    text = _string(data, "bindAddress").strip()
    if text and parse_ip(text) is None:
        raise ValueError(f"bindAddress: invalid IP address {text!r}")
    return text


def _api_server(py: Mapping[str, Any]) -> str | None:
    host = _string(py, "k8sServiceHost").strip()
    port = py.get("k8sServicePort")
    if not host:
        if port not in (None, ""):
            raise ValueError("pyagent.k8sServicePort: set pyagent.k8sServiceHost too")
        return None
    try:
        port = int(port) if port not in (None, "") else 443
    except (TypeError, ValueError):
        raise ValueError(f"pyagent.k8sServicePort: expected a port, got {port!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"pyagent.k8sServicePort: expected a port, got {port!r}")
    return f"https://{f'[{host}]' if ':' in host else host}:{port}"


def oom_score_adj(value: object, key: str) -> int:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not -1000 <= value <= 1000:
        raise ValueError(f"{key}: expected a number in [-1000, 1000], got {value!r}")
    return value


def with_default_port(address: str, port: int) -> str:
    """kube-proxy accepts a bind address without a port and appends its default."""
    host = address.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if parse_ip(host) is None:
        return address  # HOST:PORT already (or invalid: the server reports it)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def lb_map_max(value: object, key: str) -> int:
    """A map size: an integer in LB_MAP_MAX_RANGE (entries per map)."""
    low, high = LB_MAP_MAX_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}: expected an integer from {low} to {high}, got {value!r}")
    return value


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


def lb_mode(value: object, key: str) -> str:
    """bpfLbMode / --bpf-lb-mode: one of LB_MODES."""
    if value not in LB_MODES:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(LB_MODES)}")
    return str(value)


def lb_acceleration(value: object, key: str) -> str:
    """bpfLbAcceleration / --bpf-lb-acceleration: one of LB_ACCELERATIONS."""
    if value not in LB_ACCELERATIONS:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(LB_ACCELERATIONS)}")
    return str(value)


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


def _node_port_addresses(data: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """(CIDRs, primary) from nodePortAddresses: CIDRs and kube-proxy's keywords
    'primary' (the primary node IP of each family, resolved against the node
    IPs in effect), 'all' and 'localhost'."""
    out: list[str] = []
    primary = False
    for text in _strings(data, "nodePortAddresses"):
        if text == "primary":
            primary = True
        elif text == "all":
            out += ["0.0.0.0/0", "::/0"]
        elif text == "localhost":
            out += ["127.0.0.0/8", "::1/128"]
        elif (net := parse_cidr(text)) is not None:
            out.append(str(net))
        else:
            raise ValueError(f"nodePortAddresses: invalid CIDR {text!r} (or one of the "
                             "keywords primary, all, localhost)")
    return tuple(dict.fromkeys(out)), primary


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
