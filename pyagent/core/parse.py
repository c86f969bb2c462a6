"""Plain API dicts -> model values, with validation.

Every parser raises ParseError naming the offending field; the caller (the
store) reports it with the object's name and keeps the last good version.
Addresses are parsed the way kube-proxy does (leading zeros in IPv4 are
decimal, whitespace around source ranges is ignored) and normalised. Names
are validated as the API server does (DNS-1035 / DNS-1123), so a manifest
can never carry a name the API server would refuse; the dataplanes escape
them anyway.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyagent.core.model import PROTOCOLS, Endpoint, ServiceKey, ServicePort

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
LB_ALGORITHM_ANNOTATION = "pyagent.io/lb-algorithm"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, the API default for ClientIP
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
POLICIES = ("Cluster", "Local")

_IPV4_SLOPPY = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")


class ParseError(ValueError):
    """An input (a file, an object or one of its fields) is not usable:
    pyagent's own error type for bad input."""


def show(value: object, limit: int = 80) -> str:
    """`value` for an error message: one line, bounded, never raising (no
    repr of a huge or self-referencing container, of an int too long to print)."""
    if isinstance(value, Mapping):
        return f"a mapping of {len(value)} keys"
    if isinstance(value, (list, tuple, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. ValueError for ints of > 4300 digits
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


# --- names, as the API server validates them ----------------------------------------

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(_LABEL)
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")


_NAME_RULES = {
    "label": (DNS1123_LABEL, 63, "a DNS-1123 label (lower-case letters, digits and '-', "
                                 "starting and ending with a letter or digit)"),
    "1035": (DNS1035_LABEL, 63, "a DNS-1035 label (lower-case letters, digits and '-', "
                                "starting with a letter, ending with a letter or digit)"),
    "subdomain": (DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain (DNS-1123 labels "
                                          "joined by '.')"),
}


@functools.lru_cache(maxsize=4096)
def _name_ok(value: str, rule: str) -> bool:
    # Cached: each object's namespace and name are checked two or three times
    # in a row on its way into the store, and namespaces repeat. Small: a
    # cache of every name would cost 2.7 MiB at 10k Services.
    pattern, limit, _ = _NAME_RULES[rule]
    return len(value) <= limit and pattern.fullmatch(value) is not None


def check_name(value: str, field: str, rule: str) -> str:
    """`value` if it is a valid name under `rule` ("label", "1035", "subdomain")."""
    if _name_ok(value, rule):
        return value
    pattern, limit, what = _NAME_RULES[rule]
    if len(value) > limit:
        raise ParseError(f"{field}: {show(value)} is longer than {limit} characters")
    raise ParseError(f"{field}: {show(value)} is not {what}")


# --- addresses ---------------------------------------------------------------

def parse_ip(text: object) -> IPAddress | None:
    """An IP address, accepting IPv4 fields with leading zeros; None if invalid."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if _IPV4_SLOPPY.match(text):
        fields = [int(f) for f in text.split(".")]
        if max(fields) > 255:
            return None
        return ipaddress.IPv4Address(bytes(fields))  # from bytes: no second parse
    if ":" not in text or "%" in text:
        return None
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    # An IPv4-mapped address is an IPv4 address to kube-proxy.
    return addr.ipv4_mapped or addr


def parse_cidr(text: object) -> IPNetwork | None:
    """A CIDR (host bits cleared), leniently like parse_ip; None if invalid."""
    if not isinstance(text, str) or text.count("/") != 1:
        return None
    addr_text, prefix_text = text.strip().split("/")
    addr = parse_ip(addr_text)
    if addr is None or not prefix_text.isascii() or not prefix_text.isdigit():
        return None
    prefix = int(prefix_text)
    if prefix > addr.max_prefixlen:
        return None
    return ipaddress.ip_network((addr, prefix), strict=False)


def ip_text(text: object) -> tuple[str, int] | None:
    """(normalised address, family) without building an address object for
    the common IPv4 case: endpoints are the bulk of a large cluster."""
    if type(text) is str:
        try:  # strict dotted quad (no leading zeros), as ipaddress: the text is canonical
            socket.inet_pton(socket.AF_INET, text)
            return text, 4
        except (OSError, ValueError):
            pass
    addr = parse_ip(text)
    return None if addr is None else (str(addr), addr.version)


def norm_ip(text: object, field: str) -> IPAddress:
    addr = parse_ip(text)
    if addr is None:
        raise ParseError(f"{field}: invalid IP address {show(text)}")
    return addr


def norm_cidr(text: object, field: str) -> IPNetwork:
    net = parse_cidr(text)
    if net is None:
        raise ParseError(f"{field}: invalid CIDR {show(text)}")
    return net


# --- small typed getters -------------------------------------------------------

def _dict(value: object, field: str, *, required: bool = False) -> Mapping[str, Any]:
    if type(value) is dict:  # the common case, without the ABC check (100k+ calls)
        return value
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise ParseError(f"{field}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: object, field: str) -> list[Any]:
    if type(value) is list:
        return value
    if value is None:
        return []
    if not isinstance(value, list):
        raise ParseError(f"{field}: expected a list, got {type(value).__name__}")
    return value


def _str(value: object, field: str, default: str = "") -> str:
    if type(value) is str:
        return value
    if value is None:
        return default
    if not isinstance(value, str):
        raise ParseError(f"{field}: expected a string, got {show(value)}")
    return value


def _int(value: object, field: str, lo: int, hi: int, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParseError(f"{field}: expected an integer {lo}-{hi}, got {show(value)}")
    return value


def _intern(text: str) -> str:
    """One copy of a string many objects repeat (namespaces, node names)."""
    return sys.intern(text) if type(text) is str else text


def _port_name(value: object, field: str) -> str:
    name = _str(value, field)
    return check_name(name, field, "label") if name else name


def _bool(value: object, field: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParseError(f"{field}: expected true or false, got {show(value)}")
    return value


def _choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    text = _str(value, field)
    if text and text not in choices:
        raise ParseError(f"{field}: expected one of {', '.join(choices)}, got {show(text)}")
    return text


NAME_RULES = {"Service": "1035", "EndpointSlice": "subdomain", "Node": "subdomain"}


def object_name(kind: str, obj: object) -> tuple[str, str]:
    """(namespace, name), both valid as the API server requires; a namespaced
    object without a namespace is in "default"."""
    if not isinstance(obj, Mapping):
        raise ParseError(f"expected an object (a mapping), got {show(obj)}")
    meta = _dict(obj.get("metadata"), "metadata", required=True)
    name = _str(meta.get("name"), "metadata.name")
    if not name:
        raise ParseError("metadata.name: missing")
    check_name(name, "metadata.name", NAME_RULES.get(kind, "subdomain"))
    if kind == "Node":
        return ("", name)
    namespace = _str(meta.get("namespace"), "metadata.namespace") or "default"
    # Interned: a few namespaces are shared by every object of a large cluster.
    return (_intern(check_name(namespace, "metadata.namespace", "label")), name)


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """metadata, with the fields every object shares type-checked."""
    meta = _dict(obj.get("metadata"), "metadata", required=True)
    # Field names for errors are built only for an odd value (20k+ objects).
    for field in ("labels", "annotations"):
        items = meta.get(field)
        if items is None:
            continue
        for k, v in _dict(items, f"metadata.{field}").items():
            if not isinstance(k, str):
                raise ParseError(f"metadata.{field}: key {show(k)} is not a string")
            if type(v) is not str:
                _str(v, f"metadata.{field}[{show(k)}]")
    for field in ("resourceVersion", "uid", "deletionTimestamp", "generateName"):
        v = meta.get(field)
        if v is not None and type(v) is not str:
            _str(v, f"metadata.{field}")
    return meta


# --- Service -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParsedService:
    key: ServiceKey
    ports: tuple[ServicePort, ...]  # every family; empty when not proxied
    skipped: str | None = None  # why it is not proxied (headless, ExternalName)


def parse_service(obj: Mapping[str, Any], *, honour_ip_mode: bool = True,
                  key: tuple[str, str] | None = None) -> ParsedService:
    """`key`: object_name's (namespace, name) of obj, when the caller has it."""
    key = key or object_name("Service", obj)
    namespace, name = key
    spec = _dict(obj.get("spec"), "spec", required=True)
    svc_type = _choice(spec.get("type"), "spec.type", SERVICE_TYPES)
    if svc_type == "ExternalName":
        return ParsedService(key, (), "ExternalName")
    cluster_ips = _cluster_ips(spec)
    if cluster_ips is None:
        return ParsedService(key, (), "headless")
    ports = _service_ports(spec)
    external_ips = [norm_ip(ip, f"spec.externalIPs[{i}]")
                    for i, ip in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs"))]
    lb_ips = _lb_ingress_ips(obj, honour_ip_mode)
    field = "spec.loadBalancerSourceRanges"
    ranges = [norm_cidr(r, f"{field}[{i}]")
              for i, r in enumerate(_list(spec.get("loadBalancerSourceRanges"), field))]
    etp = _choice(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy", POLICIES)
    itp = _choice(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy", POLICIES)
    # The API helper: eTP counts only for types that are reachable from outside.
    reachable = svc_type in ("NodePort", "LoadBalancer") or (
        svc_type == "ClusterIP" and bool(external_ips))
    etp_local = reachable and etp == "Local"
    hc_port = 0
    if svc_type == "LoadBalancer" and etp == "Local":
        hc_port = _int(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort", 0, 65535, 0)
    affinity = _affinity_timeout(spec)
    annotations = _dict(_metadata(obj).get("annotations"), "metadata.annotations")
    algorithm = _str(annotations.get(LB_ALGORITHM_ANNOTATION),
                     f"metadata.annotations[{LB_ALGORITHM_ANNOTATION}]") or None
    distribution = _str(spec.get("trafficDistribution"), "spec.trafficDistribution") or None
    created = creation_time(_dict(obj.get("metadata"), "metadata").get("creationTimestamp"))

    out = []
    for cluster_ip in cluster_ips:
        fam = cluster_ip.version
        for port_name, protocol, port, node_port in ports:
            out.append(ServicePort(
                namespace=namespace, name=name, port_name=port_name, protocol=protocol,
                port=port, family=fam, cluster_ip=str(cluster_ip), node_port=node_port,
                external_ips=_of_family(external_ips, fam),
                lb_ips=_of_family(lb_ips, fam),
                lb_source_ranges=_of_family(ranges, fam),
                external_policy_local=etp_local,
                internal_policy_local=itp == "Local",
                health_check_node_port=hc_port,
                affinity_timeout=affinity,
                service_type=svc_type or "ClusterIP",
                traffic_distribution=distribution,
                lb_algorithm=algorithm,
                created=created,
            ))
    return ParsedService(key, tuple(out))


def creation_time(value: object) -> float | None:
    """metadata.creationTimestamp as epoch seconds: RFC 3339 text (what the
    API server sends) or a YAML timestamp; None when absent or unreadable
    (it only orders Services when maps are full, never rejects one)."""
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, str) and value:
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _of_family(values: list, family: int) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for v in values:
        if v.version == family:
            seen[str(v)] = None
    return tuple(seen)


def _cluster_ips(spec: Mapping[str, Any]) -> list[IPAddress] | None:
    """The cluster IPs, at most one per family; None for a headless service."""
    raw = _list(spec.get("clusterIPs"), "spec.clusterIPs")
    field = "spec.clusterIPs"
    if not raw:
        raw, field = [spec.get("clusterIP")], "spec.clusterIP"
    if raw[0] == "None":
        return None
    if raw[0] in (None, ""):
        raise ParseError("spec.clusterIP: no cluster IP allocated")
    ips: dict[int, IPAddress] = {}
    for i, text in enumerate(raw):
        addr = norm_ip(text, f"{field}[{i}]" if field.endswith("s") else field)
        ips.setdefault(addr.version, addr)
    return list(ips.values())


def _service_ports(spec: Mapping[str, Any]) -> list[tuple[str, str, int, int]]:
    ports = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(_list(spec.get("ports"), "spec.ports")):
        field = f"spec.ports[{i}]"
        entry = _dict(raw, field, required=True)
        name = _port_name(entry.get("name"), f"{field}.name")
        protocol = _intern(_choice(entry.get("protocol"), f"{field}.protocol", PROTOCOLS) or "TCP")
        port = _int(entry.get("port"), f"{field}.port", 1, 65535)
        node_port = _int(entry.get("nodePort"), f"{field}.nodePort", 0, 65535, 0)
        if (name, protocol) in seen:
            raise ParseError(f"{field}: duplicate port name {show(name)} for {protocol}")
        seen.add((name, protocol))
        ports.append((name, protocol, port, node_port))
    return ports


def _lb_ingress_ips(obj: Mapping[str, Any], honour_ip_mode: bool) -> list[IPAddress]:
    status = _dict(obj.get("status"), "status")
    lb = _dict(status.get("loadBalancer"), "status.loadBalancer")
    ips = []
    for i, raw in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        field = f"status.loadBalancer.ingress[{i}]"
        ing = _dict(raw, field, required=True)
        if not ing.get("ip"):
            continue  # hostname-only ingress
        mode = _choice(ing.get("ipMode"), f"{field}.ipMode", ("VIP", "Proxy"))
        addr = norm_ip(ing.get("ip"), f"{field}.ip")
        # ipMode Proxy: the load balancer delivers to the node, not to the VIP.
        if mode == "Proxy" and honour_ip_mode:
            continue
        ips.append(addr)
    return ips


def _affinity_timeout(spec: Mapping[str, Any]) -> int | None:
    mode = _choice(spec.get("sessionAffinity"), "spec.sessionAffinity", ("None", "ClientIP"))
    if mode != "ClientIP":
        return None
    cfg = _dict(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    client = _dict(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    return _int(client.get("timeoutSeconds"), "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                1, 86400, DEFAULT_AFFINITY_TIMEOUT)


# --- EndpointSlice ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParsedSlice:
    namespace: str
    name: str
    service: str  # the kubernetes.io/service-name label
    family: int | None  # None: FQDN slices, which kube-proxy ignores
    ports: tuple[tuple[str, int, str], ...]  # (name, port, protocol)
    # With the first port's number (0 when none) and is_local for the node
    # it was parsed for: the state of a one-port Service reuses them as they
    # are, so 100k endpoints are 100k objects, not one per slice and one per
    # Service port.
    endpoints: tuple[Endpoint, ...]

    @property
    def service_key(self) -> ServiceKey:
        return (self.namespace, self.service)


def parse_endpoint_slice(obj: Mapping[str, Any], node_name: str = "",
                         key: tuple[str, str] | None = None) -> ParsedSlice:
    """`key`: object_name's (namespace, name) of obj, when the caller has it."""
    namespace, name = key or object_name("EndpointSlice", obj)
    meta = _metadata(obj)
    labels = _dict(meta.get("labels"), "metadata.labels")
    service = _intern(_str(labels.get(SERVICE_NAME_LABEL),
                              f"metadata.labels[{SERVICE_NAME_LABEL}]"))
    if not service:
        raise ParseError(f"metadata.labels: no {SERVICE_NAME_LABEL} label")
    address_type = _choice(obj.get("addressType"), "addressType", ("IPv4", "IPv6", "FQDN"))
    if not address_type:
        raise ParseError("addressType: missing (IPv4, IPv6 or FQDN)")
    family = {"IPv4": 4, "IPv6": 6}.get(address_type)
    ports = []
    for i, raw in enumerate(_list(obj.get("ports"), "ports")):
        field = f"ports[{i}]"
        entry = _dict(raw, field, required=True)
        port = _int(entry.get("port"), f"{field}.port", 0, 65535, 0)
        if port == 0:
            continue  # kube-proxy ignores ports without a number
        ports.append((_intern(_port_name(entry.get("name"), f"{field}.name")),
                      port,
                      _intern(_choice(entry.get("protocol"), f"{field}.protocol",
                                      PROTOCOLS) or "TCP")))
    endpoints = []
    if family is not None:
        first_port = ports[0][1] if ports else 0
        for i, raw in enumerate(_list(obj.get("endpoints"), "endpoints")):
            ep = _endpoint(raw, i, family, address_type, first_port, node_name)
            if ep is not None:
                endpoints.append(ep)
    return ParsedSlice(namespace, name, service, family, tuple(ports), tuple(endpoints))


def _endpoint(raw: object, i: int, family: int, address_type: str, port: int,
              node_name: str) -> Endpoint | None:
    # The bulk of a large cluster (100k+ calls): values of the expected type
    # are taken as they are; the checks, and the field names their errors
    # need, only run for the others.
    entry = raw if type(raw) is dict else _dict(raw, f"endpoints[{i}]", required=True)
    get = entry.get
    addresses = get("addresses")
    if type(addresses) is not list:
        addresses = _list(addresses, f"endpoints[{i}].addresses")
    if not addresses:
        return None  # kube-proxy skips endpoints without an address
    parsed = ip_text(addresses[0])  # only the first address counts
    if parsed is None:
        raise ParseError(f"endpoints[{i}].addresses[0]: invalid IP address {show(addresses[0])}")
    if parsed[1] != family:
        raise ParseError(f"endpoints[{i}].addresses[0]: {parsed[0]} is not an "
                         f"{address_type} address")
    cond = get("conditions")
    if type(cond) is not dict:
        cond = _dict(cond, f"endpoints[{i}].conditions")
    ready, serving, terminating = cond.get("ready"), cond.get("serving"), cond.get("terminating")
    if type(ready) is not bool:
        ready = _bool(ready, f"endpoints[{i}].conditions.ready", True)
    if type(serving) is not bool:
        serving = _bool(serving, f"endpoints[{i}].conditions.serving", True)
    if type(terminating) is not bool:
        terminating = _bool(terminating, f"endpoints[{i}].conditions.terminating", False)
    node = get("nodeName")
    if type(node) is not str:
        node = _str(node, f"endpoints[{i}].nodeName")
    # Interned: a cluster has far fewer nodes than endpoints.
    on_node = sys.intern(node) if node else None
    hints = get("hints")
    if hints is None:
        zones = nodes = _NO_HINTS
    else:
        hints = _dict(hints, f"endpoints[{i}].hints")
        zones = _hint_names(hints.get("forZones"), f"endpoints[{i}].hints.forZones")
        nodes = _hint_names(hints.get("forNodes"), f"endpoints[{i}].hints.forNodes")
    return Endpoint.make(parsed[0], port, ready, serving, terminating, on_node, zones, nodes,
                         bool(node_name) and on_node == node_name)


_NO_HINTS: frozenset[str] = frozenset()


def _hint_names(value: object, field: str) -> frozenset[str]:
    if not value:  # the common case: one shared empty set, not 200 B per endpoint
        return _NO_HINTS
    return frozenset(_intern(_str(_dict(h, f"{field}[{i}]", required=True).get("name"),
                                     f"{field}[{i}].name"))
                     for i, h in enumerate(_list(value, field)))


# --- Node --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParsedNode:
    name: str
    labels: tuple[tuple[str, str], ...]
    addresses: tuple[str, ...]  # InternalIP and ExternalIP, normalised

    @property
    def zone(self) -> str:
        return dict(self.labels).get(ZONE_LABEL, "")


def parse_node(obj: Mapping[str, Any], key: tuple[str, str] | None = None) -> ParsedNode:
    """`key`: object_name's ("", name) of obj, when the caller has it."""
    _, name = key or object_name("Node", obj)
    meta = _metadata(obj)
    pairs = tuple(sorted(_dict(meta.get("labels"), "metadata.labels").items()))
    # What /healthz reads from this node (taints, deletion): checked here once.
    spec = _dict(obj.get("spec"), "spec")
    for i, raw in enumerate(_list(spec.get("taints"), "spec.taints")):
        taint = _dict(raw, f"spec.taints[{i}]", required=True)
        for field in ("key", "value", "effect"):
            _str(taint.get(field), f"spec.taints[{i}].{field}")
    status = _dict(obj.get("status"), "status")
    addresses = []
    for i, raw in enumerate(_list(status.get("addresses"), "status.addresses")):
        entry = _dict(raw, f"status.addresses[{i}]", required=True)
        if entry.get("type") in ("InternalIP", "ExternalIP"):
            addr = parse_ip(entry.get("address"))
            if addr is not None:
                addresses.append(str(addr))
    return ParsedNode(name, pairs, tuple(addresses))
