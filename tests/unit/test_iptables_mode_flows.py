"""Scenarios in the conformance format for the iptables-mode differences
(localhost NodePorts, every node IP serving NodePorts by default, the
health-check node port ACCEPT, unserved ClusterIP ports left alone), built
from the facts in the conformance README and run through the same adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conformance_adapter import (
    IPTABLES_MODE,
    effective,
    expected_result,
    flow_args,
    run_cli,
    scenario_config,
    scenario_objects,
    write_inputs,
)

NODE_IP, ALT_IP, EXT_IP = "192.168.0.2", "192.168.1.2", "192.168.99.11"
NODE_IPS = [NODE_IP, ALT_IP, EXT_IP, "2001:db8::1", "2001:db8:1::2"]
IPTABLES = {
    "nodeName": "test-node", "nodeIP": NODE_IP,
    "localDetector": {"mode": "cidr", "cidr": "10.0.0.0/8"},
    "nodePortAddresses": None, "localhostNodePorts": True, "masqueradeAll": False,
    "interface_ips": ["127.0.0.1", "::1", *NODE_IPS], "tracer_local_ips": NODE_IPS,
}


def svc(ns: str, name: str, ip: str, *, type: str | None = None, node_port: int | None = None,
        **extra: object) -> dict:
    return {"namespace": ns, "name": name, "type": type, "clusterIP": ip,
            "ports": [{"name": "p80", "protocol": "TCP", "port": 80, "nodePort": node_port}],
            **extra}


def eps(ns: str, name: str, *endpoints: tuple[str, str | None], family: str = "IPv4") -> dict:
    return {"namespace": ns, "name": f"{name}-1", "serviceName": name, "addressType": family,
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {}}
                          for ip, node in endpoints]}


def flow(name: str, src: str, dst: str, port: int, verdict: str | list[str],
         masq: bool = False, proto: str = "TCP") -> dict:
    dnat = isinstance(verdict, list)
    return {"name": name, "protocol": proto, "source_ip": src, "dest_ip": dst,
            "dest_port": port, "expected_verdict": "DNAT" if dnat else verdict,
            "expected_endpoints": verdict if dnat else None, "expected_masquerade": masq}


def scenario(sid: str, services: list, slices: list, flows: list, **overrides: object) -> dict:
    return {"id": f"iptables/{sid}", "backend": "iptables",
            "proxier_effective": {**IPTABLES, **overrides},
            "services": services, "endpoint_slices": slices, "flows": flows}


OVERALL = scenario(
    "TestTracePacket",
    [svc("ns1", "svc1", "172.30.0.41"),
     svc("ns2", "svc2", "172.30.0.42", type="LoadBalancer", node_port=3001,
         externalTrafficPolicy="Local", healthCheckNodePort=30000,
         externalIPs=["192.168.99.22"], loadBalancerIngress=[{"ip": "1.2.3.4"}]),
     svc("ns3", "svc3", "172.30.0.43", type="NodePort", node_port=3003),
     svc("ns4", "svc4", "172.30.0.44", type="NodePort", externalIPs=["192.168.99.33"]),
     svc("ns5", "svc5", "172.30.0.45", type="LoadBalancer", node_port=3002,
         externalTrafficPolicy="Cluster", healthCheckNodePort=30000,
         loadBalancerIngress=[{"ip": "5.6.7.8"}], loadBalancerSourceRanges=[" 203.0.113.0/25"],
         sessionAffinity="ClientIP", sessionAffinityTimeoutSeconds=10800),
     svc("ns6", "svc6", "172.30.0.46", type="ClusterIP")],
    [eps("ns1", "svc1", ("10.180.0.1", None)), eps("ns2", "svc2", ("10.180.0.2", None)),
     eps("ns3", "svc3", ("10.180.0.3", None)),
     eps("ns4", "svc4", ("10.180.0.4", None), ("10.180.0.5", "test-node")),
     eps("ns5", "svc5", ("10.180.0.3", None))],
    [flow("no match", "10.0.0.2", "10.0.0.3", 80, "NO_MATCH"),
     flow("single endpoint", "10.0.0.2", "172.30.0.41", 80, ["10.180.0.1:80"]),
     flow("multiple endpoints", "10.0.0.2", "172.30.0.44", 80,
          ["10.180.0.4:80", "10.180.0.5:80"]),
     flow("LOCAL, KUBE-MARK-MASQ", NODE_IP, "192.168.99.22", 80, ["10.180.0.2:80"], True),
     flow("DROP", "203.0.113.2", "192.168.99.22", 80, "DROP"),
     flow("ACCEPT (NodePortHealthCheck)", NODE_IP, NODE_IP, 30000, "ACCEPT"),
     flow("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
     flow("unserved ClusterIP port is left alone", "10.0.0.2", "172.30.0.41", 443, "NO_MATCH"),
     flow("external to LB with affinity", "203.0.113.2", "5.6.7.8", 80, ["10.180.0.3:80"],
          True),
     flow("blocked external to LB", "203.0.113.130", "5.6.7.8", 80, "DROP")])


def _node_ports(name: str, family: int, localhost: bool, addresses: list[str] | None,
                alt_allowed: bool) -> dict:
    v4 = family == 4
    svc_ip, ep1, ep2 = (("172.30.0.41", "10.180.0.1", "10.180.2.1") if v4 else
                        ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1"))
    pod, client, node, alt, lo = (("10.0.0.2", "203.0.113.2", NODE_IP, ALT_IP, "127.0.0.1") if v4
                                  else ("fd00:10::2", "2600:5200::1", "2001:db8::1",
                                        "2001:db8:1::2", "::1"))
    out = sorted(f"{ip}:80" if v4 else f"[{ip}]:80" for ip in (ep1, ep2))
    flows = [flow("pod to cluster IP", pod, svc_ip, 80, out),
             flow("external to nodePort", client, node, 3001, out, True),
             flow("node to nodePort", node, node, 3001, out, True),
             flow("localhost to nodePort", lo, lo, 3001,
                  out if v4 and localhost else "NO_MATCH", v4 and localhost),
             flow("external to nodePort on secondary IP", client, alt, 3001,
                  out if alt_allowed else "NO_MATCH", alt_allowed)]
    return scenario(
        f"TestNodePorts/{name}",
        [svc("ns1", "svc1", svc_ip, type="NodePort", node_port=3001)],
        [eps("ns1", "svc1", (ep1, None), (ep2, "test-node"), family=f"IPv{family}")],
        flows, localhostNodePorts=localhost, nodePortAddresses=addresses,
        localDetector={"mode": "cidr", "cidr": "10.0.0.0/8" if v4 else "fd00:10::/64"})


MULTI = ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"]
NODE_PORTS = [
    _node_ports("ipv4, localhost-nodeports enabled", 4, True, None, True),
    _node_ports("ipv4, localhost-nodeports disabled", 4, False, None, True),
    _node_ports("ipv4, localhost-nodeports disabled, localhost in nodeport-addresses", 4, False,
                ["192.168.0.0/24", "127.0.0.1/32"], False),
    _node_ports("ipv4, multiple nodeport-addresses", 4, False, MULTI, True),
    _node_ports("ipv6, localhost-nodeports enabled", 6, True, None, True),
    _node_ports("ipv6, localhost-nodeports disabled", 6, False, None, True),
    _node_ports("ipv6, multiple nodeport-addresses", 6, False, MULTI, False),
]

HC_SERVICE = svc("ns1", "svc1", "172.30.0.42", type="LoadBalancer", node_port=3001,
                 externalTrafficPolicy="Local", healthCheckNodePort=30000)
HEALTH_CHECK = [
    scenario("TestHealthCheckNodePort", [HC_SERVICE], [],
             [flow("firewall accepts HealthCheckNodePort", "1.2.3.4", NODE_IP, 30000, "ACCEPT")],
             nodePortAddresses=["127.0.0.0/8"]),
    scenario("TestHealthCheckNodePort [after service deleted]", [], [],
             [flow("HealthCheckNodePort no longer has any rule", "1.2.3.4", NODE_IP, 30000,
                   "NO_MATCH")], nodePortAddresses=["127.0.0.0/8"]),
]

MASQ_SERVICES = [
    svc("ns1", "svc1", "172.30.0.41", type="LoadBalancer", node_port=3001,
        healthCheckNodePort=30001, loadBalancerIngress=[{"ip": "1.2.3.4"}]),
    svc("ns2", "svc2", "172.30.0.42", type="LoadBalancer", node_port=3002,
        healthCheckNodePort=30002, externalTrafficPolicy="Local",
        loadBalancerIngress=[{"ip": "5.6.7.8"}]),
    svc("ns3", "svc3", "172.30.0.43", type="LoadBalancer", node_port=3003,
        healthCheckNodePort=30003, internalTrafficPolicy="Local",
        loadBalancerIngress=[{"ip": "9.10.11.12"}]),
]
MASQ_SLICES = [eps(f"ns{i}", f"svc{i}", (f"10.180.0.{i}", "test-node"), (f"10.180.1.{i}", "r"))
               for i in (1, 2, 3)]


def _both(i: int) -> list[str]:
    return [f"10.180.0.{i}:80", f"10.180.1.{i}:80"]


LOCALHOST_MASQ = [
    scenario(f"TestInternalExternalMasquerade/{name}", MASQ_SERVICES, MASQ_SLICES, [
        flow("localhost to NodePort", "127.0.0.1", "127.0.0.1", 3001, _both(1), True),
        flow("localhost to NodePort with eTP:Local", "127.0.0.1", "127.0.0.1", 3002, _both(2),
             True),
        flow("localhost to NodePort with iTP:Local", "127.0.0.1", "127.0.0.1", 3003, _both(3),
             True),
        flow("pod to NodePort with eTP:Local", "10.0.0.2", NODE_IP, 3002,
             _both(2) if detector else ["10.180.0.2:80"]),
        flow("health-check port of an eTP:Cluster service is not special", NODE_IP, NODE_IP,
             30001, "NO_MATCH"),
    ], localDetector={"mode": "cidr", "cidr": "10.0.0.0/8"} if detector else {"mode": "none"})
    for name, detector in (("base", True), ("no LocalTrafficDetector", False))
]

SCENARIOS = [OVERALL, *NODE_PORTS, *HEALTH_CHECK, *LOCALHOST_MASQ]


@pytest.mark.parametrize("scn", SCENARIOS, ids=lambda s: s["id"])
def test_iptables_mode_scenario(scn: dict, tmp_path: Path) -> None:
    manifests, cfg = write_inputs(tmp_path, scenario_objects(scn), scenario_config(scn))
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps([flow_args(f) for f in scn["flows"]]))
    code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                              "--flows", str(flows)])
    assert code == 0 and not err, err
    for f, got in zip(scn["flows"], json.loads(out), strict=True):
        assert got == expected_result(f), f["name"]


@pytest.mark.parametrize("scn", SCENARIOS, ids=lambda s: s["id"])
def test_proxier_settings_verbatim_as_config(scn: dict, tmp_path: Path) -> None:
    config = {**effective(scn), "pyagent": IPTABLES_MODE}
    manifests, cfg = write_inputs(tmp_path, scenario_objects(scn), config)
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps([flow_args(f) for f in scn["flows"]]))
    code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                              "--flows", str(flows)])
    assert code == 0, err
    assert json.loads(out) == [expected_result(f) for f in scn["flows"]]


def test_nftables_semantics_of_the_same_state(tmp_path: Path) -> None:
    """The same objects under the default (nftables) config: unserved ClusterIP
    ports are rejected and the health-check node port is not intercepted."""
    scn = {**OVERALL, "backend": "nftables"}
    manifests, cfg = write_inputs(tmp_path, scenario_objects(scn), scenario_config(scn))
    for (dst, port), want in {(("172.30.0.41", 443)): "REJECT",
                              ((NODE_IP, 30000)): "NO_MATCH"}.items():
        code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                                  "--src", "10.0.0.2", "--dst", dst, "--dport", str(port),
                                  "--json"])
        assert code == 0, err
        assert json.loads(out)["verdict"] == want
