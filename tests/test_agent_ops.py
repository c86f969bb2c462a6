"""Operator view of a running eBPF agent: services list, status, /metrics and
/healthz (scraped from inside the lab's node namespace)."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterator

import pytest
from agentlab import AgentLab, agent_lab, service, slice_

from pyagent.lab import Lab
from pyagent.observe import statusfile

pytestmark = pytest.mark.root

METRICS = (
    "kubeproxy_sync_proxy_rules_duration_seconds_count",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_network_programming_duration_seconds_count",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
)


@pytest.fixture
def alab() -> Iterator[AgentLab]:
    with agent_lab(3) as a:
        yield a


def http_get(lab: Lab, port: int, path: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            f"try:\n r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)\n"
            " print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    res = lab.run([sys.executable, "-c", code], in_cgroup=False)
    status, _, body = res.stdout.partition("\n")
    return int(status), body


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_services_list_status_metrics_healthz(alab: AgentLab) -> None:
    lab = alab.lab
    alab.write("svc.yaml", service("echo", ["10.96.0.10"], [("http", "TCP", 80)]),
               slice_("echo", "echo", 4, [("http", "TCP", 8080)],
                      [(p.ip4, True) for p in lab.pods]))
    alab.start("--metrics-per-backend")
    alab.wait(lambda f: len(f.get(("10.96.0.10", 80, "TCP"), ())) == 3, "echo")
    alab.wait(lambda f: statusfile.read(alab.bpffs) is not None, "status file")
    assert lab.client("10.96.0.10", 80, count=30).total == 30

    rows = json.loads(alab.pyagent("services", "list", "--bpffs", alab.bpffs,
                                   "--json").stdout)
    [row] = [r for r in rows if r["frontend"] == "10.96.0.10:80/TCP"]
    assert row["service"] == "default/echo:http" and row["type"] == "CLUSTER_IP"
    assert sorted(row["backends"]) == sorted(f"{p.ip4}:8080" for p in lab.pods)
    assert row["scope"] == "internal" and row["algorithm"] == "random"
    assert sum(e["newConnections"] for e in row["endpoints"]) >= 30
    assert {e["state"] for e in row["endpoints"]} == {"active"}
    wide = alab.pyagent("services", "list", "--bpffs", alab.bpffs, "-o", "wide").stdout
    assert "AFFINITY" in wide and "default/echo:http" in wide and " new)" in wide

    st = json.loads(alab.pyagent("status", "--bpffs", alab.bpffs, "--json").stdout)
    assert st["mode"] == "ebpf" and st["agentRunning"] is True
    assert st["cgroup"] == str(lab.cgroup)
    assert len(st["attachments"]) == 9 and all(len(v) == 1 for v in st["attachments"].values())
    assert st["maps"]["lb4_services"]["entries"] == 4  # master + 3 slots
    assert st["healthy"] is True and st["problems"] == [], st["problems"]
    assert st["source"]["kind"] == "manifests" and st["source"]["connected"] is True
    assert st["version"] and st["agentVersion"] == st["version"]
    assert st["lastEvent"] and st["metricsAddress"].startswith("127.0.0.1:")
    assert st["monitors"] == {"listening": [], "stale": [], "lost": 0}
    text = alab.pyagent("status", "--bpffs", alab.bpffs)
    assert text.returncode == 0 and text.stdout.rstrip().endswith("status:      OK"), text.stdout

    info = statusfile.read(alab.bpffs)
    assert info is not None
    code, body = http_get(lab, info["metricsPort"], "/metrics")
    assert code == 200
    m = parse_metrics(body)
    for name in METRICS:
        assert name in m, f"{name} missing"
    assert m["kubeproxy_sync_proxy_rules_duration_seconds_count"] >= 1
    assert m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 1e9
    assert m["kubeproxy_sync_proxy_rules_service_changes_pending"] == 0
    assert m["kubeproxy_sync_proxy_rules_endpoint_changes_total"] >= 1
    assert m['pyagent_bpf_map_pressure{map_name="lb4_services"}'] > 0
    key = 'pyagent_service_new_connections_total{namespace="default",port="http",service="echo"}'
    assert m[key] >= 30
    build = (f'pyagent_build_info{{mode="ebpf",python_version="{platform.python_version()}",'
             f'version="{st["version"]}"}}')
    assert m[build] == 1
    assert m["process_resident_memory_bytes"] > 0 and m["process_open_fds"] > 0
    assert m["kubeproxy_sync_full_proxy_rules_duration_seconds_count"] >= 1
    assert m['kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"}'] == 0
    assert not [k for k in m if "_created" in k]
    per_backend = [m[f'pyagent_backend_new_connections_total{{backend="{p.ip4}:8080"}}']
                   for p in lab.pods]
    assert sum(per_backend) >= 30 and all(n > 0 for n in per_backend)

    code, body = http_get(lab, info["healthzPort"], "/healthz")
    assert code == 200, body
    assert {"lastUpdated", "currentTime"} <= set(json.loads(body))

    alab.stop()
    down = alab.pyagent("status", "--bpffs", alab.bpffs)
    assert down.returncode == 1 and "problem:     the agent is not running" in down.stdout
