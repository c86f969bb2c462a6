"""Turns the conformance vectors (../shared/conformance) into what pyagent's
CLI takes: a manifests directory of plain API objects and a node config file.

Only the vectors' own fields are used; which kube-proxy mode a scenario came
from is expressed through config keys (see pyagent.core.config).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import yaml

from pyagent.cli import plan as cmd_plan
from pyagent.cli import trace as cmd_trace

# $PYAGENT_CONFORMANCE_DIR: elsewhere (and how the test policy is tested)
SHARED = Path(os.environ.get("PYAGENT_CONFORMANCE_DIR")
              or Path(__file__).resolve().parents[2] / "../shared/conformance")
NODE = "test-node"
REMOTE = "remote-node"


def load(name: str) -> Any:
    return json.loads((SHARED / name).read_text())


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# --- packet-flow scenarios ------------------------------------------------------

def service_object(svc: dict) -> dict:
    ports = [_drop_none({"name": p.get("name"), "protocol": p.get("protocol"),
                         "port": p["port"], "nodePort": p.get("nodePort"),
                         "targetPort": p.get("targetPort")}) for p in svc.get("ports") or []]
    spec: dict[str, Any] = _drop_none({
        "type": svc.get("type"),
        "clusterIP": svc.get("clusterIP"),
        "clusterIPs": svc.get("clusterIPs"),
        "ipFamilies": svc.get("ipFamilies"),
        "externalName": svc.get("externalName"),
        "ports": ports,
        "externalIPs": svc.get("externalIPs") or None,
        "loadBalancerSourceRanges": svc.get("loadBalancerSourceRanges") or None,
        "externalTrafficPolicy": svc.get("externalTrafficPolicy"),
        "internalTrafficPolicy": svc.get("internalTrafficPolicy"),
        "healthCheckNodePort": svc.get("healthCheckNodePort"),
        "sessionAffinity": svc.get("sessionAffinity"),
        "trafficDistribution": svc.get("trafficDistribution"),
    })
    if svc.get("sessionAffinityTimeoutSeconds") is not None:
        spec["sessionAffinityConfig"] = {
            "clientIP": {"timeoutSeconds": svc["sessionAffinityTimeoutSeconds"]}}
    ingress = [_drop_none({"ip": i.get("ip"), "ipMode": i.get("ipMode")})
               for i in svc.get("loadBalancerIngress") or []]
    obj = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": svc["namespace"], "name": svc["name"]}, "spec": spec}
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


def slice_object(es: dict) -> dict:
    endpoints = []
    for ep in es.get("endpoints") or []:
        entry: dict[str, Any] = {"addresses": ep["addresses"]}
        if ep.get("nodeName") is not None:
            entry["nodeName"] = ep["nodeName"]
        conditions = _drop_none(ep.get("conditions") or {})
        if conditions:
            entry["conditions"] = conditions
        hints = ep.get("hints") or _drop_none({
            "forZones": [{"name": z} for z in ep["zoneHints"]] if ep.get("zoneHints") else None,
            "forNodes": [{"name": n} for n in ep["nodeHints"]] if ep.get("nodeHints") else None,
        })
        if hints:
            entry["hints"] = hints
        if ep.get("zone"):
            entry["zone"] = ep["zone"]
        endpoints.append(entry)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": es["namespace"], "name": es["name"],
                         "labels": {"kubernetes.io/service-name": es["serviceName"]}},
            "addressType": es.get("addressType", "IPv4"),
            "ports": [_drop_none({"name": p.get("name"), "port": p.get("port"),
                                  "protocol": p.get("protocol")}) for p in es.get("ports") or []],
            "endpoints": endpoints}


def node_object(name: str, labels: dict | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta}


def effective(scn: dict, defaults: dict | None = None) -> dict:
    """The scenario's proxier settings over its backend's defaults."""
    base = ((defaults or {}).get(scn["backend"]) or {}).get(scn.get("ip_family") or "IPv4")
    return {**(base or {}), **(scn.get("proxier_effective") or {})}


def scenario_config(scn: dict, defaults: dict | None = None) -> dict:
    """The node config a scenario's fake proxier had, in config-file form."""
    eff = effective(scn, defaults)
    ips = [eff.get("nodeIP"), *eff.get("interface_ips", []), *eff.get("tracer_local_ips", [])]
    cfg: dict[str, Any] = {
        "nodeName": eff.get("nodeName", NODE),
        "nodeIPs": list(dict.fromkeys(ip for ip in ips if ip)),
        "masqueradeAll": bool(eff.get("masqueradeAll")),
        "localDetector": eff.get("localDetector") or {"mode": "none"},
    }
    if eff.get("nodePortAddresses") is not None:
        cfg["nodePortAddresses"] = eff["nodePortAddresses"]
    if eff.get("serviceCIDR"):
        cfg["serviceCIDRs"] = [eff["serviceCIDR"]]
    if scn["backend"] == "iptables":
        cfg["iptables"] = {"localhostNodePorts": bool(eff.get("localhostNodePorts", True))}
        cfg["pyagent"] = IPTABLES_MODE
    return cfg


# What kube-proxy's iptables mode does differently, as pyagent config.
IPTABLES_MODE = {"rejectUnknownClusterIPPorts": False, "acceptHealthCheckNodePorts": True}


def scenario_objects(scn: dict) -> list[dict]:
    name = (scn.get("proxier_effective") or {}).get("nodeName", NODE)
    return ([service_object(s) for s in scn.get("services") or []]
            + [slice_object(e) for e in scn.get("endpoint_slices") or []]
            + [node_object(name)])


def write_inputs(tmp: Path, objects: list[dict], config: dict, as_json: bool = False) -> tuple[
        Path, Path]:
    manifests = tmp / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    if as_json:
        (manifests / "objects.json").write_text(json.dumps({"kind": "List", "items": objects}))
    else:
        (manifests / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    cfg = tmp / "node.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return manifests, cfg


def flow_args(flow: dict) -> dict:
    return {"src": flow["source_ip"], "dst": flow["dest_ip"], "dport": flow["dest_port"],
            "proto": flow.get("protocol") or "TCP"}


def expected_result(flow: dict) -> dict:
    eps = flow.get("expected_endpoints") or []
    return {"verdict": flow["expected_verdict"], "endpoints": sorted(eps),
            "masquerade": bool(flow.get("expected_masquerade"))}


# --- categorize cases ------------------------------------------------------------

def _split_addr(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def categorize_inputs(case: dict) -> tuple[list[dict], dict]:
    node = case.get("node_name") or NODE
    svc = case["service"]
    eps = case.get("endpoints")
    v6 = any(":" in _split_addr(e["endpoint"])[0] for e in eps or [])
    node_port = svc.get("nodePort") or 0
    lb_vips = svc.get("loadBalancerVIPs") or []
    svc_type = "NodePort" if node_port else "LoadBalancer" if lb_vips else "ClusterIP"
    service = {
        "namespace": "ns1", "name": "svc1", "type": svc_type,
        "clusterIP": "fd00:172:30::1" if v6 else "172.30.0.1",
        "ports": [{"name": "p80", "protocol": "TCP", "port": 80,
                   "nodePort": node_port or None}],
        "externalIPs": svc.get("externalIPs") or [],
        "loadBalancerIngress": [{"ip": ip} for ip in lb_vips],
        "externalTrafficPolicy": svc.get("externalTrafficPolicy"),
        "internalTrafficPolicy": svc.get("internalTrafficPolicy"),
    }
    objects = [service_object(service), node_object(node, case.get("node_labels"))]
    by_port: dict[int, list[dict]] = {}
    for ep in eps or []:
        ip, port = _split_addr(ep["endpoint"])
        by_port.setdefault(port, []).append({
            "addresses": [ip],
            "nodeName": node if ep.get("isLocal") else (ep.get("nodeName") or REMOTE),
            "conditions": {k: bool(ep.get(k)) for k in ("ready", "serving", "terminating")},
            "zoneHints": ep.get("zoneHints"), "nodeHints": ep.get("nodeHints"),
        })
    if eps is not None and not by_port:
        by_port[80] = []
    for i, (port, entries) in enumerate(sorted(by_port.items())):
        objects.append(slice_object({
            "namespace": "ns1", "name": f"svc1-{i}", "serviceName": "svc1",
            "addressType": "IPv6" if v6 else "IPv4",
            "ports": [{"name": "p80", "port": port, "protocol": "TCP"}],
            "endpoints": entries}))
    gates = case.get("feature_gates") or {}
    config = {"nodeName": node, "featureGates": {k: bool(v) for k, v in gates.items()}}
    return objects, config


# --- running the CLI -----------------------------------------------------------------

def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run `pyagent <argv>` in-process through the functions main() dispatches to."""
    parser = ArgumentParser(prog="pyagent")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd_plan.register(sub)
    cmd_trace.register(sub)
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def cli_command() -> list[str]:
    """The real command line (`python -m pyagent`) once its parser builds, else
    the sub-command's own module (same register() and run())."""
    try:
        from pyagent.cli import build_parser

        build_parser()
        return [sys.executable, "-m", "pyagent"]
    except Exception:  # the CLI of the other commands may still be in progress
        return [sys.executable, "-m", "pyagent.cli.{}"]


def run_subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = cli_command()
    if cmd[-1].endswith("{}"):  # module fallback: the subcommand picks the module
        cmd = [*cmd[:-1], cmd[-1].format(argv[0])]
        argv = argv[1:]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
