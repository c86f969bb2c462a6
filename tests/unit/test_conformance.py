"""Every conformance vector in ../shared/conformance, through pyagent's CLI.

Scenarios become a manifests directory plus a node config file; `plan` and
`trace` run through the same functions `pyagent` dispatches to, and a few
through the real command line in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conformance_adapter import (
    IPTABLES_MODE,
    SHARED,
    categorize_inputs,
    effective,
    expected_result,
    flow_args,
    load,
    node_object,
    run_cli,
    run_subprocess,
    scenario_config,
    scenario_objects,
    service_object,
    slice_object,
    write_inputs,
)

if not SHARED.is_dir():
    pytest.skip(f"conformance vectors not found at {SHARED.resolve()} (shared/ must sit "
                "beside the checkout)", allow_module_level=True)

CATEGORIZE = load("categorize_endpoints.json")
FLOWS = load("packet_flows.json")
DEFAULTS = FLOWS.get("backend_defaults") or {}
SCENARIOS = FLOWS.get("scenarios", []) + FLOWS.get("derived_scenarios", [])
FLOW_CASES = [(scn, i) for scn in SCENARIOS for i in range(len(scn.get("flows") or []))]


def _flow_id(case: tuple[dict, int]) -> str:
    scn, i = case
    return f"{scn['id']}#{i}:{scn['flows'][i]['name']}"


# --- packet flows ---------------------------------------------------------------

_results: dict[str, list[dict]] = {}


def _scenario_results(scn: dict, tmp: Path) -> list[dict]:
    """All flows of a scenario traced in one `pyagent trace --flows` run (cached)."""
    if scn["id"] not in _results:
        manifests, cfg = write_inputs(tmp, scenario_objects(scn), scenario_config(scn, DEFAULTS))
        flows = tmp / "flows.json"
        flows.write_text(json.dumps([flow_args(f) for f in scn["flows"]]))
        code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                                  "--flows", str(flows)])
        assert code == 0, err
        assert err == "", err  # the vectors hold no invalid object
        _results[scn["id"]] = json.loads(out)
    return _results[scn["id"]]


@pytest.mark.parametrize("case", FLOW_CASES, ids=_flow_id)
def test_packet_flow(case: tuple[dict, int], tmp_path: Path) -> None:
    scn, i = case
    flow = scn["flows"][i]
    got = _scenario_results(scn, tmp_path)[i]
    assert got == expected_result(flow), (
        f"{scn['id']}: {flow['name']} ({flow_args(flow)}); notes: {scn.get('notes')}")


@pytest.mark.parametrize("scn", SCENARIOS, ids=lambda s: s["id"])
def test_single_flow_trace_and_plan(scn: dict, tmp_path: Path) -> None:
    """The single-flow form of trace agrees, and plan runs on every scenario."""
    manifests, cfg = write_inputs(tmp_path, scenario_objects(scn),
                                  scenario_config(scn, DEFAULTS), as_json=True)
    for flow in scn["flows"][:3]:
        f = flow_args(flow)
        code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                                  "--src", f["src"], "--dst", f["dst"], "--dport",
                                  str(f["dport"]), "--proto", f["proto"], "--json"])
        assert code == 0, err
        assert json.loads(out) == expected_result(flow), flow["name"]
    code, out, err = run_cli(["plan", "--manifests", str(manifests), "--config", str(cfg),
                              "--json"])
    assert code == 0, err
    plan = json.loads(out)["servicePorts"]
    expected_ports = {(s["namespace"], s["name"], p.get("name") or "", p.get("protocol") or "TCP")
                      for s in scn["services"] for p in s["ports"]}
    assert {(e["namespace"], e["name"], e["portName"], e["protocol"]) for e in plan} \
        == expected_ports


@pytest.mark.parametrize("scn", SCENARIOS[:: max(1, len(SCENARIOS) // 4)], ids=lambda s: s["id"])
def test_real_cli_subprocess(scn: dict, tmp_path: Path) -> None:
    manifests, cfg = write_inputs(tmp_path, scenario_objects(scn),
                                  scenario_config(scn, DEFAULTS))
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps([flow_args(f) for f in scn["flows"]]))
    proc = run_subprocess(["trace", "--manifests", str(manifests), "--config", str(cfg),
                           "--flows", str(flows)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [expected_result(f) for f in scn["flows"]]
    proc = run_subprocess(["plan", "--manifests", str(manifests), "--config", str(cfg),
                           "--json"])
    assert proc.returncode == 0, proc.stderr
    assert "servicePorts" in json.loads(proc.stdout)


@pytest.mark.parametrize("scn", SCENARIOS, ids=lambda s: s["id"])
def test_proxier_settings_verbatim_as_config(scn: dict, tmp_path: Path) -> None:
    """The vectors' own proxier settings are a valid config file as they stand
    (plus the iptables-mode switches for iptables scenarios)."""
    config = effective(scn, DEFAULTS)
    if scn["backend"] == "iptables":
        config = {**config, "pyagent": IPTABLES_MODE}
    manifests, cfg = write_inputs(tmp_path, scenario_objects(scn), config)
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps([flow_args(f) for f in scn["flows"]]))
    code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                              "--flows", str(flows)])
    assert code == 0, err
    assert json.loads(out) == [expected_result(f) for f in scn["flows"]]


# --- endpoint categorization ------------------------------------------------------

def _same_set(got: list[str] | None, want: list[str] | None) -> bool:
    # The Go harness compares by content; nil and empty are the same there.
    return sorted(got or []) == sorted(want or [])


@pytest.mark.parametrize("case", CATEGORIZE, ids=lambda c: f"{c['index']}:{c['name']}")
def test_categorize(case: dict, tmp_path: Path) -> None:
    objects, config = categorize_inputs(case)
    manifests, cfg = write_inputs(tmp_path, objects, config)
    code, out, err = run_cli(["plan", "--manifests", str(manifests), "--config", str(cfg),
                              "--json"])
    assert code == 0, err
    (entry,) = json.loads(out)["servicePorts"]
    want = case["expected"]
    assert _same_set(entry["clusterEndpoints"], want["clusterEndpoints"]), "cluster"
    assert _same_set(entry["localEndpoints"], want["localEndpoints"]), "local"
    assert _same_set(entry["allEndpoints"], want["allEndpoints_effective"]), "all"
    assert entry["hasAnyEndpoints"] == want["hasAnyEndpoints"]
    # Stricter than the Go harness: null ("never used") and [] ("used, none
    # qualify") are told apart too.
    assert (entry["clusterEndpoints"] is None) == (want["clusterEndpoints"] is None), "cluster nil"
    assert (entry["localEndpoints"] is None) == (want["localEndpoints"] is None), "local nil"


# --- non-flow facts ----------------------------------------------------------------

def _plan(tmp: Path, objects: list[dict], config: dict) -> list[dict]:
    manifests, cfg = write_inputs(tmp, objects, config)
    code, out, err = run_cli(["plan", "--manifests", str(manifests), "--config", str(cfg),
                              "--json"])
    assert code == 0, err
    return json.loads(out)["servicePorts"]


def _trace(tmp: Path, objects: list[dict], config: dict, **flow: Any) -> dict:
    manifests, cfg = write_inputs(tmp, objects, config)
    code, out, err = run_cli(["trace", "--manifests", str(manifests), "--config", str(cfg),
                              "--src", flow["src"], "--dst", flow["dst"],
                              "--dport", str(flow["dport"]), "--json"])
    assert code == 0, err
    return json.loads(out)


def _slice(ns: str, svc: str, eps: list[tuple[str, str | None, dict]], port: int = 80,
           port_name: str = "p80") -> dict:
    return slice_object({
        "namespace": ns, "name": f"{svc}-1", "serviceName": svc, "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": cond}
                      for ip, node, cond in eps]})


def _svc(**fields: Any) -> dict:
    base = {"namespace": "ns1", "name": "svc1", "clusterIP": "172.30.0.41",
            "ports": [{"name": "p80", "protocol": "TCP", "port": 80}]}
    return service_object({**base, **fields})


BASE_CONFIG = {"nodeName": "test-node", "nodeIPs": ["192.168.0.2"],
               "localDetector": {"mode": "cidr", "cidr": "10.0.0.0/8"}}


def check_lb_ingress_ip_mode(group: dict, tmp: Path) -> None:
    for i, case in enumerate(group["cases"]):
        lb_ip = case.get("lbIP", "1.2.3.4")
        svc = _svc(type="LoadBalancer", clusterIP=case.get("clusterIP", "172.30.0.41"),
                   ports=[{"name": "p80", "protocol": "TCP", "port": 80, "nodePort": 3001}],
                   loadBalancerIngress=[{"ip": lb_ip, "ipMode": case.get("ipMode")}])
        config = {**BASE_CONFIG, "featureGates": case.get("feature_gates") or {}}
        objects = [svc, _slice("ns1", "svc1", [("10.180.0.1", None, {})])]
        got = _trace(tmp / str(i), objects, config, src="203.0.113.2", dst=lb_ip, dport=80)
        assert (got["verdict"] != "NO_MATCH") == case["lb_ip_intercepted"], case["name"]


def check_bad_ips(group: dict, tmp: Path) -> None:
    pairs = group["normalisations"]
    ips = {raw: norm for raw, norm in pairs.items() if "/" not in raw}
    cidrs = {raw: norm for raw, norm in pairs.items() if "/" in raw}
    svc = _svc(type="LoadBalancer", externalIPs=list(ips), loadBalancerSourceRanges=list(cidrs),
               loadBalancerIngress=[{"ip": raw} for raw in ips])
    objects = [svc, _slice("ns1", "svc1", [(raw, None, {}) for raw in ips])]
    (entry,) = _plan(tmp, objects, BASE_CONFIG)
    assert set(entry["externalIPs"]) == set(ips.values())
    assert set(entry["loadBalancerIPs"]) == set(ips.values())
    assert set(entry["loadBalancerSourceRanges"]) == set(cidrs.values())
    assert set(entry["clusterEndpoints"]) == {f"{n}:80" for n in ips.values()}


def check_health_check_terminating(group: dict, tmp: Path) -> None:
    svc = _svc(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=30000,
               ports=[{"name": "p80", "protocol": "TCP", "port": 80, "nodePort": 3001}])
    ready = {"ready": True, "serving": True, "terminating": False}
    ending = {"ready": False, "serving": True, "terminating": True}
    gone = {"ready": False, "serving": False, "terminating": True}
    for i, (conds, want) in enumerate((([ready] * 3, 3), ([ending, ending, gone], 0))):
        eps = [(f"10.0.1.{n + 1}", "test-node", c) for n, c in enumerate(conds)]
        (entry,) = _plan(tmp / str(i), [svc, _slice("ns1", "svc1", eps)], BASE_CONFIG)
        assert entry["localReadyEndpoints"] == want
        assert entry["healthCheckNodePort"] == 30000


def check_no_endpoints_metric(group: dict, tmp: Path) -> None:
    from pyagent.core.config import load_config
    from pyagent.core.planner import load_state

    for i, case in enumerate(group["cases"]):
        svc = _svc(clusterIP="172.30.1.1", internalTrafficPolicy=case["itp"],
                   externalTrafficPolicy=case["etp"], type="NodePort" if case["etp"] else None,
                   ports=[{"name": "", "protocol": "TCP", "port": 80, "nodePort": 123}])
        eps = [(ip, node, {"ready": True}) for ip, node in case["endpoints"]]
        manifests, cfg = write_inputs(tmp / str(i), [svc, _slice("ns1", "svc1", eps,
                                                                  port_name="")], BASE_CONFIG)
        state, errors, _ = load_state(manifests, load_config(cfg))
        assert not errors
        assert state.no_local_endpoints() == (case["expected_internal"],
                                              case["expected_external"]), case["name"]


def check_build_service_map(group: dict, tmp: Path) -> None:
    def port(name: str, proto: str, number: int, node_port: int) -> dict:
        return {"name": name, "protocol": proto, "port": number, "nodePort": node_port}

    objects = [
        _svc(name="cluster-ip", clusterIP="172.30.55.4",
             ports=[port("something", "UDP", 1234, 4321), port("sctpport", "SCTP", 1236, 6321)]),
        _svc(name="headless", clusterIP="None", ports=[port("rpc", "UDP", 1234, 0)]),
        _svc(name="external-name", type="ExternalName", clusterIP="172.30.55.4",
             externalName="foo2.bar.com", ports=[port("blah", "UDP", 1235, 5321)]),
        _svc(name="only-local-load-balancer", type="LoadBalancer", clusterIP="172.30.55.12",
             externalTrafficPolicy="Local", healthCheckNodePort=345,
             loadBalancerIngress=[{"ip": "5.6.7.8"}], ports=[port("baz", "UDP", 8678, 30064)]),
        _svc(name="cluster-lb", type="LoadBalancer", clusterIP="172.30.55.11",
             healthCheckNodePort=346, loadBalancerIngress=[{"ip": "1.2.3.4"}],
             ports=[port("foobar", "UDP", 8675, 30061)]),
    ]
    entries = _plan(tmp / "a", objects, BASE_CONFIG)
    assert sorted(e["name"] for e in entries) == [
        "cluster-ip", "cluster-ip", "cluster-lb", "only-local-load-balancer"]
    hc = {e["name"]: e["healthCheckNodePort"] for e in entries if e["healthCheckNodePort"]}
    assert hc == {"only-local-load-balancer": 345}
    # Switching the service back to ClusterIP removes its health-check node port.
    objects[3] = _svc(name="only-local-load-balancer", clusterIP="172.30.55.12",
                      ports=[port("baz", "UDP", 8678, 0)])
    assert not any(e["healthCheckNodePort"] for e in _plan(tmp / "b", objects, BASE_CONFIG))


NON_FLOW = {
    "TestLoadBalancerIngressRouteTypeProxy": check_lb_ingress_ip_mode,
    "TestBadIPs": check_bad_ips,
    "TestHealthCheckNodePortWhenTerminating": check_health_check_terminating,
    "TestNoEndpointsMetric": check_no_endpoints_metric,
}


def _non_flow_check(group: dict) -> Any:
    if group["go_test"].startswith("TestBuildServiceMap"):
        return check_build_service_map
    return NON_FLOW.get(group["go_test"])


@pytest.mark.parametrize("group", FLOWS.get("non_flow_assertions", []),
                         ids=lambda g: f"{g['backend']}:{g['go_test']}")
def test_non_flow_assertion(group: dict, tmp_path: Path) -> None:
    check = _non_flow_check(group)
    assert check is not None, f"no check for {group['go_test']}: {group.get('fact')}"
    check(group, tmp_path)


def test_every_vector_is_loaded() -> None:
    assert CATEGORIZE and SCENARIOS and FLOW_CASES
    assert all(s["backend"] in ("nftables", "iptables") for s in SCENARIOS)
    node = node_object("x")
    assert node["metadata"]["name"] == "x"
