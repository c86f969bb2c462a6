"""Which frontends (scope, flags, backends) a service port becomes in the
eBPF maps, from kube-proxy's endpoint sets."""

from __future__ import annotations

from pyagent.core.config import NodeConfig
from pyagent.core.store import ServiceStore
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.frontends import frontends_for

F = L.ServiceFlag
NODE_IP = "192.168.50.10"


def states(spec: dict, endpoints: list[tuple[str, str]], interfaces=("eth0",),
           lb_ip: str | None = None):
    config = NodeConfig(node_name="node-a", node_ips=(NODE_IP,), cluster_cidrs=("10.244.0.0/16",),
                        interfaces=tuple(interfaces))
    store = ServiceStore(config)
    store.replace("Service", [{
        "kind": "Service", "metadata": {"name": "s", "namespace": "ns"},
        "spec": {"clusterIP": "10.96.0.1", "type": "NodePort",
                 "ports": [{"name": "p", "port": 80, "nodePort": 30080, "protocol": "TCP"}],
                 **spec},
        "status": {"loadBalancer": {"ingress": [{"ip": lb_ip}] if lb_ip else []}}}])
    store.replace("EndpointSlice", [{
        "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "s-1", "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": "s"}},
        "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": n} for ip, n in endpoints]}])
    store.replace("Node", [])
    [sps] = store.state_for(("ns", "s"))
    return {(f.ip, f.port, f.scope): f for f in frontends_for(sps, config)}


def ips(fe) -> set[str]:
    return {b.ip for b in fe.backends}


EPS = [("10.244.0.5", "node-a"), ("10.244.1.5", "node-b")]


def test_etp_cluster_node_port_is_masqueraded_to_all_endpoints() -> None:
    fes = states({}, EPS)
    ext = fes[(NODE_IP, 30080, L.SCOPE_EXTERNAL)]
    assert ext.flags & F.NODE_PORT and ext.flags & F.MASQUERADE
    assert ips(ext) == {"10.244.0.5", "10.244.1.5"}
    assert {b.local for b in ext.backends} == {True, False}
    internal = fes[(NODE_IP, 30080, L.SCOPE_INTERNAL)]
    assert ips(internal) == ips(ext) and not internal.flags & F.MASQUERADE


def test_etp_local_keeps_the_client_and_uses_local_endpoints_only() -> None:
    fes = states({"externalTrafficPolicy": "Local"}, EPS)
    ext = fes[(NODE_IP, 30080, L.SCOPE_EXTERNAL)]
    assert ext.flags & F.LOCAL_ETP and not ext.flags & F.MASQUERADE
    assert ips(ext) == {"10.244.0.5"}
    # pods and the node are short-circuited to every endpoint
    assert ips(fes[(NODE_IP, 30080, L.SCOPE_INTERNAL)]) == {"10.244.0.5", "10.244.1.5"}


def test_etp_local_without_local_endpoints_drops_and_without_any_rejects() -> None:
    ext = states({"externalTrafficPolicy": "Local"}, EPS[1:])[(NODE_IP, 30080, 0)]
    assert not ext.backends and ext.flags & F.DROP_NO_BACKEND
    ext = states({"externalTrafficPolicy": "Local"}, [])[(NODE_IP, 30080, 0)]
    assert not ext.backends and not ext.flags & F.DROP_NO_BACKEND


def test_lb_source_ranges_go_to_the_tc_path_with_the_implicit_node_allow() -> None:
    spec = {"type": "LoadBalancer", "loadBalancerSourceRanges": [" 192.168.50.0/24 "]}
    fes = states(spec, EPS, lb_ip="5.6.7.8")
    ext = fes[("5.6.7.8", 80, L.SCOPE_EXTERNAL)]
    assert ext.flags & F.LOADBALANCER and ext.flags & F.SOURCE_RANGE
    # the range holds the node IP: the LB IP itself is allowed too
    assert ext.source_ranges == ("192.168.50.0/24", "5.6.7.8/32")
    assert ("5.6.7.8", 80, L.SCOPE_INTERNAL) not in fes  # sources unknown at connect()
    assert not fes[(NODE_IP, 30080, L.SCOPE_EXTERNAL)].flags & F.SOURCE_RANGE


def test_lb_ip_without_ranges_serves_both_scopes() -> None:
    fes = states({"type": "LoadBalancer"}, EPS, lb_ip="5.6.7.8")
    assert fes[("5.6.7.8", 80, L.SCOPE_EXTERNAL)].source_ranges == ()
    assert ips(fes[("5.6.7.8", 80, L.SCOPE_INTERNAL)]) == {"10.244.0.5", "10.244.1.5"}


def test_no_tc_interfaces_no_external_frontends() -> None:
    fes = states({}, EPS, interfaces=())
    assert {scope for _, _, scope in fes} == {L.SCOPE_INTERNAL}


def test_cluster_ip_masquerade_families_follow_kube_proxy() -> None:
    """External traffic to a ClusterIP is masqueraded with masqueradeAll or a
    local-traffic detector of the family (it is not from a pod), else not."""
    from pyagent.dataplanes.ebpf.frontends import cluster_ip_masquerade_families as fams

    assert fams(NodeConfig()) == ()
    assert fams(NodeConfig(masquerade_all=True)) == (4, 6)
    assert fams(NodeConfig(cluster_cidrs=("10.244.0.0/16",))) == (4,)
    assert fams(NodeConfig(cluster_cidrs=("10.244.0.0/16", "fd00:244::/48"))) == (4, 6)
    assert fams(NodeConfig(local_detect_mode="InterfaceNamePrefix",
                           local_interface="veth+")) == (4, 6)


def test_cluster_ip_gets_no_external_copy() -> None:
    """The TC path serves external traffic to a ClusterIP from its INTERNAL
    entry: frontends_for writes no EXTERNAL one, iTP=Local or not."""
    for spec in ({}, {"internalTrafficPolicy": "Local"}):
        fes = states(spec, EPS)
        assert ("10.96.0.1", 80, L.SCOPE_EXTERNAL) not in fes
        internal = fes[("10.96.0.1", 80, L.SCOPE_INTERNAL)]
        assert internal.flags & F.CLUSTER_IP
        want = {"10.244.0.5"} if spec else {"10.244.0.5", "10.244.1.5"}
        assert ips(internal) == want
