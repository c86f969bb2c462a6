"""Desired state (plan JSON, diff) and trace details the vectors do not cover."""

from __future__ import annotations

import pytest

from pyagent.core.config import NodeConfig
from pyagent.core.state import diff_service_ports
from pyagent.core.store import ServiceStore
from pyagent.core.trace import Tracer, trace

CONFIG = NodeConfig(node_name="n1", node_ips=("192.168.0.2", "2001:db8::1"),
                    cluster_cidrs=("10.0.0.0/8", "fd00:10::/64"))


def store_with(*objects: dict, config: NodeConfig = CONFIG) -> ServiceStore:
    store = ServiceStore(config)
    for kind in ("Service", "EndpointSlice", "Node"):
        store.replace(kind, [o for o in objects if o["kind"] == kind])
    return store


def service(name: str = "svc", **spec: object) -> dict:
    return {"kind": "Service", "metadata": {"namespace": "ns", "name": name},
            "spec": {"clusterIP": "172.30.0.1", "ports": [{"name": "p", "port": 80}], **spec}}


def slice_(family: str, *ips: str, service: str = "svc", node: str = "n2") -> dict:
    return {"kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": f"{service}-{family.lower()}",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "ports": [{"name": "p", "port": 8080}],
            "endpoints": [{"addresses": [ip], "nodeName": node} for ip in ips]}


DUAL = service(type="LoadBalancer", clusterIPs=["172.30.0.1", "fd00:30::1"],
               loadBalancerSourceRanges=["192.168.0.0/24", "2001:db8:ff::/48"],
               externalTrafficPolicy="Local")
DUAL_STATUS = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "2001:db8:4::4"}]}}


def test_dual_stack_plan_and_trace() -> None:
    store = store_with({**DUAL, "status": DUAL_STATUS}, slice_("IPv4", "10.1.0.1"),
                       slice_("IPv6", "fd00:10::5", node="n1"))
    state = store.full_state()
    plan = state.to_plan_json()["servicePorts"]
    assert [(p["ipFamily"], p["clusterEndpoints"], p["localEndpoints"]) for p in plan] == [
        ("IPv4", ["10.1.0.1:8080"], []), ("IPv6", ["[fd00:10::5]:8080"], ["[fd00:10::5]:8080"])]
    v4, v6 = state.service_ports
    # The node IP is inside the IPv4 range, so the LB IP is an allowed source too.
    assert v4.lb_source_allow == ("192.168.0.0/24", "1.2.3.4/32")
    assert v6.lb_source_allow == ("2001:db8:ff::/48",)
    tr = Tracer(state, CONFIG)
    assert tr.trace("fd00:10::9", "fd00:30::1", 80, "tcp") == {
        "verdict": "DNAT", "endpoints": ["[fd00:10::5]:8080"], "masquerade": False}
    assert tr.trace("2001:db8:ff::9", "2001:db8:4::4", 80, "TCP")["verdict"] == "DNAT"
    assert tr.trace("2001:db8:fe::9", "2001:db8:4::4", 80, "TCP")["verdict"] == "DROP"
    # An IPv4 client never matches an IPv6 frontend.
    assert tr.trace("10.0.0.1", "fd00:30::1", 80, "TCP")["verdict"] == "NO_MATCH"
    # eTP=Local from outside with no local IPv4 endpoint: dropped, not rejected.
    assert tr.trace("192.168.0.200", "1.2.3.4", 80, "TCP")["verdict"] == "DROP"


def test_other_family_source_ranges_do_not_restrict() -> None:
    store = store_with({**service(type="LoadBalancer", loadBalancerSourceRanges=["fd00::/8"]),
                        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}},
                       slice_("IPv4", "10.1.0.1"))
    res = trace(store.full_state(), CONFIG, "203.0.113.9", "1.2.3.4", 80, "TCP")
    assert res == {"verdict": "DNAT", "endpoints": ["10.1.0.1:8080"], "masquerade": True}


def test_trace_rejects_bad_input() -> None:
    state = store_with(service()).full_state()
    with pytest.raises(ValueError, match="protocol"):
        trace(state, CONFIG, "10.0.0.1", "172.30.0.1", 80, "ICMP")
    with pytest.raises(ValueError, match="address"):
        trace(state, CONFIG, "nope", "172.30.0.1", 80, "TCP")


def test_plan_json_distinguishes_unused_from_empty() -> None:
    store = store_with(service(internalTrafficPolicy="Local"), slice_("IPv4", "10.1.0.1"))
    (entry,) = store.full_state().to_plan_json()["servicePorts"]
    assert entry["clusterEndpoints"] is None and entry["localEndpoints"] == []
    assert entry["hasAnyEndpoints"] is True
    assert store.full_state().no_local_endpoints() == (1, 0)


def test_diff_service_ports() -> None:
    old = store_with(service("a"), service("b"), slice_("IPv4", "10.1.0.1", service="b"))
    new = store_with(service("b"), service("c"), slice_("IPv4", "10.1.0.2", service="b"))
    added, removed, changed = diff_service_ports(old.full_state(), new.full_state())
    assert [s.service.name for s in added] == ["c"]
    assert [s.service.name for s in removed] == ["a"]
    assert [(a.cluster_endpoints[0].ip, b.cluster_endpoints[0].ip) for a, b in changed] == [
        ("10.1.0.1", "10.1.0.2")]
    assert diff_service_ports(new.full_state(), new.full_state()) == ([], [], [])
