"""deploy/observability: the alert rules pass `promtool check rules` and
each alert really fires (and stays silent) on the series it is about
(`promtool test rules`); the agent's /metrics passes `promtool check
metrics`; the dashboard and the rules only name metrics the agent exports;
the ServiceMonitor's Service finds the DaemonSet's pods."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from pyagent.observe.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"


def promtool() -> str:
    # deploy/setup.sh puts it beside the venv's python
    local = Path(sys.executable).parent / "promtool"
    path = str(local) if local.exists() else shutil.which("promtool")
    assert path, "promtool missing: deploy/setup.sh unpacks it into the venv"
    return path


def rule_groups() -> dict:
    doc = yaml.safe_load((OBS / "prometheus-rules.yaml").read_text())
    assert doc["kind"] == "PrometheusRule"
    return {"groups": doc["spec"]["groups"]}


def populated_metrics() -> Metrics:
    """Every family with at least one sample, as a busy agent exports them."""
    m = Metrics(mode="ebpf")
    m.synced(0.02, 1_700_000_000.0)
    m.synced(0.5, 1_700_000_001.0, ok=False)
    m.extra.synced(0.02, True, {})
    m.extra.synced(0.01, False, {})
    m.extra.request("GET", "10.0.0.1:6443", "200", 0.01)
    m.network_programming_duration.observe(1.5)
    m.service_changes_total.inc()
    m.set_sources(map_pressure=lambda: {"lb4_services": 0.5},
                  service_connections=lambda: {"default/web:http": 3},
                  backend_connections=lambda: {"10.0.0.1:8080": 3})
    return m


def exported_names(m: Metrics) -> set[str]:
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_rules_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    r = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout + r.stderr


def _alert_test(name: str, series: list[dict], fires: bool, labels: dict | None = None,
                at: str = "30m") -> dict:
    expected = [{"exp_labels": {**(labels or {}), "severity": _severity(name)}}] \
        if fires else []
    return {"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}]}


def _severity(name: str) -> str:
    for g in rule_groups()["groups"]:
        for r in g["rules"]:
            if r["alert"] == name:
                return r["labels"]["severity"]
    raise KeyError(name)


def test_each_alert_fires_on_its_condition_only(tmp_path: Path) -> None:
    inst = {"instance": "node-1:10249", "job": "pyagent"}
    lab = 'instance="node-1:10249",job="pyagent"'
    tests = [
        _alert_test("PyagentBpfMapPressure", [
            {"series": f'pyagent_bpf_map_pressure{{{lab},map_name="lb4_services"}}',
             "values": "0.95x40"}], True, {**inst, "map_name": "lb4_services"}),
        _alert_test("PyagentBpfMapPressure", [
            {"series": f'pyagent_bpf_map_pressure{{{lab},map_name="lb4_services"}}',
             "values": "0.85x40"}], False),
        _alert_test("PyagentSyncFailing", [
            {"series": f"pyagent_sync_errors_total{{{lab}}}", "values": "0+1x40"}], True, inst),
        _alert_test("PyagentSyncFailing", [
            {"series": f"pyagent_sync_errors_total{{{lab}}}", "values": "5x40"}], False),
        _alert_test("PyagentRefusedServices", [
            {"series": f'pyagent_object_errors{{{lab},kind="Service"}}', "values": "2x40"}],
            True, {**inst, "kind": "Service"}),
        _alert_test("PyagentRefusedServices", [
            {"series": f'pyagent_object_errors{{{lab},kind="Service"}}', "values": "0x40"}],
            False),
        # the last sync at t=0 (timestamp 0): stale from 2 minutes on, alerting 5 later
        _alert_test("PyagentSourceStale", [
            {"series": f"kubeproxy_sync_proxy_rules_last_timestamp_seconds{{{lab}}}",
             "values": "0x40"}], True, inst),
        _alert_test("PyagentSourceStale", [
            {"series": f"kubeproxy_sync_proxy_rules_last_timestamp_seconds{{{lab}}}",
             "values": "0+60x40"}], False),
        _alert_test("PyagentSourceErrors", [
            {"series": f"pyagent_source_errors{{{lab}}}", "values": "1x40"}], True, inst),
        _alert_test("PyagentProgrammingLatencyHigh", [
            {"series": f'kubeproxy_network_programming_duration_seconds_bucket{{{lab},le="30"}}',
             "values": "0x40"},
            {"series": f'kubeproxy_network_programming_duration_seconds_bucket{{{lab},le="60"}}',
             "values": "0+10x40"},
            {"series": f'kubeproxy_network_programming_duration_seconds_bucket{{{lab},le="+Inf"}}',
             "values": "0+10x40"}], True, {"instance": "node-1:10249"}),
        _alert_test("PyagentProgrammingLatencyHigh", [
            {"series": f'kubeproxy_network_programming_duration_seconds_bucket{{{lab},le="1"}}',
             "values": "0+10x40"},
            {"series": f'kubeproxy_network_programming_duration_seconds_bucket{{{lab},le="+Inf"}}',
             "values": "0+10x40"}], False),
        _alert_test("PyagentApiServerErrors", [
            {"series": f'rest_client_requests_total{{{lab},code="503",method="GET",host="a"}}',
             "values": "0+60x40"}], True, {"instance": "node-1:10249"}),
    ]
    # promtool compares annotations too; their templates are checked above, so
    # these cases are about conditions and labels only
    groups = rule_groups()
    for g in groups["groups"]:
        for rule in g["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    r = subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_agent_metrics_pass_promtool_check_metrics() -> None:
    text = generate_latest(populated_metrics().registry).decode()
    # kube-proxy's no-local-endpoints gauge keeps its `_total` name (exposed
    # untyped so promtool's lint accepts it): it must be in what was checked
    assert "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total untyped" in text
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def _metric_names(expr: str) -> set[str]:
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\)|$)", expr))
    return {w for w in words if w.startswith(("kubeproxy_", "pyagent_", "process_", "rest_"))}


def test_dashboard_and_rules_name_only_exported_metrics() -> None:
    names = exported_names(populated_metrics())
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert len(used) >= 15, used
    assert used <= names, used - names
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_service_monitor_selects_the_daemonset() -> None:
    svc, sm = yaml.safe_load_all((OBS / "servicemonitor.yaml").read_text())
    ds = next(d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
        if d and d["kind"] == "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert svc["metadata"]["namespace"] == ds["metadata"]["namespace"]


@pytest.mark.parametrize("kind", ["Service"])
def test_service_is_a_valid_object(kind: str) -> None:
    from .test_deploy import check, model_for  # the schema checker of deploy/kubernetes

    doc = next(d for d in yaml.safe_load_all((OBS / "servicemonitor.yaml").read_text())
               if d["kind"] == kind)
    assert check(doc, model_for(doc), kind) == []
