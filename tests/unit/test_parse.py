"""API dicts -> model values."""

from __future__ import annotations

import pytest

from pyagent.core.parse import (
    ParseError,
    ip_text,
    parse_cidr,
    parse_endpoint_slice,
    parse_ip,
    parse_node,
    parse_service,
)


def service(spec: dict, status: dict | None = None, **meta: object) -> dict:
    obj = {"kind": "Service", "metadata": {"namespace": "ns", "name": "svc", **meta},
           "spec": {"clusterIP": "172.30.0.1", "ports": [{"port": 80}], **spec}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize("text,want", [
    ("172.30.0.041", "172.30.0.41"), ("010.180.00.001", "10.180.0.1"), (" 1.2.3.4 ", "1.2.3.4"),
    ("FD00:0:0::0001", "fd00::1"), ("::ffff:1.2.3.4", "1.2.3.4"),
    ("1.2.3.256", None), ("1.2.3", None), ("fe80::1%eth0", None), ("", None), (None, None),
    ("1.2.3.4.5", None), ("abc", None),
])
def test_parse_ip(text: object, want: str | None) -> None:
    got = parse_ip(text)
    assert (str(got) if got else None) == want


@pytest.mark.parametrize("text", [
    "10.1.2.3", "0.0.0.0", "255.255.255.255", "172.30.0.041", " 1.2.3.4 ", "1.2.3.4\n",
    "1.2.3.4\x00", "\u0967.2.3.4", "1.2.3.256", "1.2.3", "fd00::1", "::ffff:1.2.3.4", "", 7,
    None, b"1.2.3.4",
])
def test_ip_text_is_parse_ip_normalised(text: object) -> None:
    """The endpoint fast path (a strict dotted quad taken as it is) gives what
    parse_ip gives, leniency included."""
    want = parse_ip(text)
    assert ip_text(text) == (None if want is None else (str(want), want.version))


@pytest.mark.parametrize("text,want", [
    ("203.0.113.000/025", "203.0.113.0/25"), (" 203.0.113.0/25", "203.0.113.0/25"),
    ("192.168.0.2/24", "192.168.0.0/24"), ("2001:db8::1/64", "2001:db8::/64"),
    ("1.2.3.4/33", None), ("1.2.3.4", None), ("1.2.3.4/x", None),
])
def test_parse_cidr(text: str, want: str | None) -> None:
    got = parse_cidr(text)
    assert (str(got) if got else None) == want


def test_dual_stack_service_gives_one_port_per_family() -> None:
    svc = parse_service(service(
        {"type": "LoadBalancer", "clusterIPs": ["172.30.0.1", "fd00::1"],
         "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                   {"name": "dns", "port": 53, "protocol": "UDP"}],
         "externalIPs": ["192.168.99.11", "2001:db8::99"],
         "loadBalancerSourceRanges": ["10.0.0.0/8", "fd00::/8"]},
        {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "2001:db8::4", "ipMode": "VIP"},
                                      {"ip": "5.6.7.8", "ipMode": "Proxy"},
                                      {"hostname": "lb.example.com"}]}}))
    assert svc.skipped is None
    by_key = {(p.port_name, p.family): p for p in svc.ports}
    assert set(by_key) == {("http", 4), ("dns", 4), ("http", 6), ("dns", 6)}
    v4, v6 = by_key[("http", 4)], by_key[("http", 6)]
    assert (v4.cluster_ip, v4.external_ips, v4.lb_ips, v4.lb_source_ranges, v4.node_port) == (
        "172.30.0.1", ("192.168.99.11",), ("1.2.3.4",), ("10.0.0.0/8",), 30080)
    assert (v6.cluster_ip, v6.external_ips, v6.lb_ips, v6.lb_source_ranges) == (
        "fd00::1", ("2001:db8::99",), ("2001:db8::4",), ("fd00::/8",))
    assert by_key[("dns", 4)].protocol == "UDP"


def test_ip_mode_proxy_is_kept_when_the_gate_is_off() -> None:
    obj = service({"type": "LoadBalancer"},
                  {"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "Proxy"}]}})
    assert parse_service(obj).ports[0].lb_ips == ()
    assert parse_service(obj, honour_ip_mode=False).ports[0].lb_ips == ("1.2.3.4",)


@pytest.mark.parametrize("spec,skipped", [
    ({"clusterIP": "None"}, "headless"), ({"clusterIPs": ["None"]}, "headless"),
    ({"type": "ExternalName", "externalName": "x.example.com"}, "ExternalName"),
])
def test_headless_and_external_name_are_skipped(spec: dict, skipped: str) -> None:
    svc = parse_service(service(spec))
    assert svc.ports == () and svc.skipped == skipped


@pytest.mark.parametrize("spec,etp_local", [
    ({"type": "NodePort", "externalTrafficPolicy": "Local"}, True),
    ({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}, True),
    ({"type": "ClusterIP", "externalIPs": ["1.1.1.1"], "externalTrafficPolicy": "Local"}, True),
    ({"type": "ClusterIP", "externalTrafficPolicy": "Local"}, False),
    ({"externalIPs": ["1.1.1.1"], "externalTrafficPolicy": "Local"}, False),  # type unset
    ({"type": "NodePort", "externalTrafficPolicy": "Cluster"}, False),
])
def test_external_policy_local_follows_the_api_helper(spec: dict, etp_local: bool) -> None:
    assert parse_service(service(spec)).ports[0].external_policy_local is etp_local


def test_health_check_port_only_for_load_balancer_with_local_policy() -> None:
    lb_local = {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 345}
    assert parse_service(service(lb_local)).ports[0].health_check_node_port == 345
    for spec in ({**lb_local, "externalTrafficPolicy": "Cluster"},
                 {**lb_local, "type": "NodePort"}):
        assert parse_service(service(spec)).ports[0].health_check_node_port == 0


def test_affinity_and_annotations() -> None:
    sp = parse_service(service({"sessionAffinity": "ClientIP"},
                               annotations={"pyagent.io/lb-algorithm": "maglev"})).ports[0]
    assert sp.affinity_timeout == 10800 and sp.lb_algorithm == "maglev"
    sp = parse_service(service({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {
        "clientIP": {"timeoutSeconds": 60}}})).ports[0]
    assert sp.affinity_timeout == 60
    assert parse_service(service({})).ports[0].affinity_timeout is None


def test_missing_namespace_means_default() -> None:
    obj = service({})
    del obj["metadata"]["namespace"]
    assert parse_service(obj).key == ("default", "svc")


@pytest.mark.parametrize("spec,field", [
    ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"port": "80"}]}, "spec.ports[0].port"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[1]"),
    ({"clusterIP": "172.30.0.300"}, "spec.clusterIP"),
    ({"clusterIP": ""}, "spec.clusterIP"),
    ({"externalIPs": ["nope"]}, "spec.externalIPs[0]"),
    ({"loadBalancerSourceRanges": ["10.0.0.0/40"]}, "spec.loadBalancerSourceRanges[0]"),
    ({"type": "Weird"}, "spec.type"),
    ({"externalTrafficPolicy": "Global"}, "spec.externalTrafficPolicy"),
])
def test_invalid_services_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ParseError, match=rf"^{field.replace('[', '.').replace(']', '.')}"):
        parse_service(service(spec))


def slice_obj(endpoints: list, address_type: str = "IPv4", **extra: object) -> dict:
    return {"kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": "svc-1",
                         "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": address_type, "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints, **extra}


def test_endpoint_slice_defaults_and_first_address() -> None:
    sl = parse_endpoint_slice(slice_obj([
        {"addresses": ["10.0.0.01", "10.0.0.2"]},
        {"addresses": ["10.0.0.3"], "nodeName": "n1",
         "conditions": {"ready": False, "serving": True, "terminating": True},
         "hints": {"forZones": [{"name": "a"}], "forNodes": [{"name": "n1"}]}},
        {"addresses": []},
    ]))
    assert sl.service_key == ("ns", "svc") and sl.family == 4
    assert sl.ports == (("http", 8080, "TCP"),)
    first, second = sl.endpoints
    assert (first.ip, first.ready, first.serving, first.terminating, first.node_name) == (
        "10.0.0.1", True, True, False, None)
    assert (second.ready, second.serving, second.terminating) == (False, True, True)
    assert second.zone_hints == {"a"} and second.node_hints == {"n1"}


def test_fqdn_slices_carry_no_endpoints() -> None:
    sl = parse_endpoint_slice(slice_obj([{"addresses": ["example.com"]}], "FQDN"))
    assert sl.family is None and sl.endpoints == ()


@pytest.mark.parametrize("obj,match", [
    (slice_obj([{"addresses": ["fd00::1"]}]), "not an IPv4 address"),
    (slice_obj([{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]), "ready"),
    # each odd field named in full (the common case skips building the names)
    (slice_obj([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"],
                "conditions": {"serving": "no"}}]), r"endpoints\[1\]\.conditions\.serving"),
    (slice_obj([{"addresses": ["10.0.0.1"], "conditions": {"terminating": 1}}]),
     r"endpoints\[0\]\.conditions\.terminating"),
    (slice_obj([{"addresses": ["10.0.0.1"], "conditions": []}]), r"endpoints\[0\]\.conditions"),
    (slice_obj([{"addresses": ["10.0.0.1"], "nodeName": 5}]), r"endpoints\[0\]\.nodeName"),
    (slice_obj([{"addresses": "10.0.0.1"}]), r"endpoints\[0\]\.addresses: expected a list"),
    (slice_obj(["10.0.0.1"]), r"endpoints\[0\]: expected a mapping"),
    (slice_obj([{"addresses": ["10.0.0.1"], "hints": {"forZones": [{"name": 3}]}}]),
     r"endpoints\[0\]\.hints\.forZones\[0\]\.name"),
    (slice_obj([{"addresses": ["10.0.0.1"], "hints": []}]), r"endpoints\[0\]\.hints"),
    ({**slice_obj([]), "metadata": {"name": "x", "namespace": "ns"}}, "service-name"),
    ({**slice_obj([]), "addressType": None}, "addressType"),
])
def test_invalid_slices(obj: dict, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_endpoint_slice(obj)


def test_node_zone_and_addresses() -> None:
    node = parse_node({"metadata": {"name": "n1",
                                    "labels": {"topology.kubernetes.io/zone": "z1"}},
                       "status": {"addresses": [{"type": "InternalIP", "address": "10.1.1.1"},
                                                {"type": "Hostname", "address": "n1"}]}})
    assert (node.name, node.zone, node.addresses) == ("n1", "z1", ("10.1.1.1",))
