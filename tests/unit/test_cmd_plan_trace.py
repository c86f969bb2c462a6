"""The plan and trace commands: output forms, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .conformance_adapter import run_cli

SERVICE = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": "ns", "name": "web"},
           "spec": {"type": "NodePort", "clusterIP": "172.30.0.10",
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}
SLICE = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"namespace": "ns", "name": "web-1",
                      "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
         "endpoints": [{"addresses": ["10.0.1.1"], "nodeName": "node-1"}]}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}


def write(directory: Path, *objects: dict, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "all.yaml").write_text(yaml.safe_dump_all(objects) + extra)
    return directory


def test_plan_table_and_errors(tmp_path: Path) -> None:
    bad = {**SERVICE, "metadata": {"namespace": "ns", "name": "broken"},
           "spec": {"clusterIP": "172.30.0.11", "ports": [{"port": 99999}]}}
    manifests = write(tmp_path / "m", SERVICE, SLICE, NODE, bad)
    code, out, err = run_cli(["plan", "--manifests", str(manifests), "--node-name", "node-1"])
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["SERVICE", "TYPE", "FRONTEND"]
    assert row.split() == ["ns/web:http/TCP", "NodePort", "172.30.0.10:80", "30080",
                           "10.0.1.1:8080", "-", "yes"]
    assert "Service ns/broken: spec.ports[0].port" in err


def test_plan_diff(tmp_path: Path) -> None:
    old = write(tmp_path / "old", SERVICE, SLICE)
    moved = json.loads(json.dumps(SLICE))
    moved["endpoints"][0]["addresses"] = ["10.0.1.2"]
    new = write(tmp_path / "new", SERVICE, moved)
    code, out, _ = run_cli(["plan", "--manifests", str(new), "--diff", str(old), "--json"])
    diff = json.loads(out)
    assert code == 0 and diff["added"] == [] and diff["removed"] == []
    (change,) = diff["changed"]
    assert change["new"]["clusterEndpoints"] == ["10.0.1.2:8080"]
    code, out, _ = run_cli(["plan", "--manifests", str(new), "--diff", str(old)])
    assert out.startswith("~ ns/web:http/TCP")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    manifests = write(tmp_path / "m", SERVICE)
    code, _, err = run_cli(["plan", "--manifests", str(tmp_path / "absent")])
    assert code == 2 and "not a directory" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nodeNmae: x\n")
    code, _, err = run_cli(["plan", "--manifests", str(manifests), "--config", str(cfg)])
    assert code == 2 and "nodeNmae" in err
    code, _, err = run_cli(["trace", "--manifests", str(manifests), "--src", "10.0.0.1"])
    assert code == 2 and "--flows" in err
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps([{"src": "10.0.0.1", "dst": "172.30.0.10"}]))
    code, _, err = run_cli(["trace", "--manifests", str(manifests), "--flows", str(flows)])
    assert code == 2 and "flow 0" in err
    flows.write_text(json.dumps([{"src": "10.0.0.1", "dst": "172.30.0.10", "dport": 80,
                                  "proto": "GRE"}]))
    code, _, err = run_cli(["trace", "--manifests", str(manifests), "--flows", str(flows)])
    assert code == 2 and "GRE" in err


def test_trace_uses_the_node_objects_addresses(tmp_path: Path) -> None:
    """Without nodeIPs in the config, NodePorts are served on the Node's addresses."""
    manifests = write(tmp_path / "m", SERVICE, SLICE, NODE)
    argv = ["trace", "--manifests", str(manifests), "--node-name", "node-1",
            "--src", "203.0.113.2", "--dst", "192.168.0.2", "--dport", "30080"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert out.strip() == "DNAT -> 10.0.1.1:8080 (masqueraded)"
    code, out, _ = run_cli([*argv, "--json"])
    assert json.loads(out) == {"verdict": "DNAT", "endpoints": ["10.0.1.1:8080"],
                               "masquerade": True}
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps([
        {"src": "203.0.113.2", "dst": "192.168.0.2", "dport": 30080},
        {"src": "203.0.113.2", "dst": "192.168.0.2", "dport": 30081, "proto": "udp"}]))
    code, out, _ = run_cli(["trace", "--manifests", str(manifests), "--node-name", "node-1",
                            "--flows", str(flows)])
    assert [r["verdict"] for r in json.loads(out)] == ["DNAT", "NO_MATCH"]


def test_wrongly_typed_manifests_are_errors_not_tracebacks(tmp_path: Path) -> None:
    """main: plan/trace printed a TypeError traceback for `labels: {1: a, b: c}`."""
    manifests = write(tmp_path / "m", SERVICE, SLICE, NODE, extra=(
        "---\nkind: Service\nmetadata: {name: keys, namespace: ns, labels: {1: a, b: c}}\n"
        "spec: {clusterIP: 172.30.0.11, ports: [{port: 80}]}\n"
        "---\nkind: Service\nmetadata: {name: nulls, namespace: ns, labels: {~: a}}\n"
        "spec: {clusterIP: 172.30.0.12, ports: [{port: 80}]}\n"
        "---\nkind: Service\nmetadata: {name: dated, namespace: ns, "
        "annotations: {deployed: 2024-01-01}}\n"
        "spec: {clusterIP: 172.30.0.13, ports: [{port: 80}]}\n"))
    code, out, err = run_cli(["plan", "--manifests", str(manifests), "--node-name", "node-1",
                              "--json"])
    assert code == 0, err
    assert [p["name"] for p in json.loads(out)["servicePorts"]] == ["dated", "web"]
    assert "all.yaml: Service ns/keys: metadata.labels: mapping key 1 (int) is not a " \
           "string" in err
    assert "all.yaml: Service ns/nulls: metadata.labels: mapping key ~ (null)" in err
    code, out, err = run_cli(["trace", "--manifests", str(manifests), "--node-name", "node-1",
                              "--src", "10.0.0.1", "--dst", "172.30.0.11", "--dport", "80"])
    assert code == 0 and out.strip() == "NO_MATCH", err
    assert "Service ns/keys" in err


def test_bad_trace_inputs_exit_2_with_a_message(tmp_path: Path) -> None:
    manifests = write(tmp_path / "m", SERVICE)
    flows = tmp_path / "flows.json"
    cases = [
        ("[" * 50_000 + "]" * 50_000, "invalid JSON"),
        ('[{"src": {"a": 1}, "dst": "172.30.0.10", "dport": 80}]', "flow 0: src: expected"),
        ('[{"src": "10.0.0.1", "dst": "172.30.0.10", "dport": 1e999}]', "inf is not a JSON"),
        ('{"a": NaN}', "NaN is not JSON"),
    ]
    for text, msg in cases:
        flows.write_text(text)
        code, _, err = run_cli(["trace", "--manifests", str(manifests), "--flows", str(flows)])
        assert code == 2 and msg in err, (text[:40], err)
    code, _, err = run_cli(["trace", "--manifests", str(manifests), "--src", "10.0.0.1",
                            "--dst", "172.30.0.10", "--dport", "70000"])
    assert code == 2 and "--dport" in err
    # Found by tests/fuzz: the synthetic packet of --bpf has no SCTP (KeyError on main).
    code, _, err = run_cli(["trace", "--bpf", "--bpffs", str(tmp_path), "--src", "10.0.0.1",
                            "--dst", "172.30.0.10", "--dport", "80", "--proto", "SCTP"])
    assert code == 2 and "TCP or UDP" in err
