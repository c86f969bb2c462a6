"""plan and trace from a live API server (--kubeconfig; the fake API server
of tests/kubeapi.py with the real kubernetes client), and --node-ip so the
model answers for the address the kernel serves NodePorts on."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeapi import FakeKubeAPI

from .conformance_adapter import run_cli
from .test_cmd_plan_trace import NODE, SERVICE, SLICE


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[str]:
    api = FakeKubeAPI().start()
    node = copy.deepcopy(NODE)
    node["status"]["addresses"][0]["address"] = "192.168.0.10"  # not the traced address
    for obj in (SERVICE, SLICE, node):
        api.create(copy.deepcopy(obj))
    try:
        yield str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    finally:
        api.stop()


def test_plan_reads_the_api_server(kubeconfig: str) -> None:
    code, out, err = run_cli(["plan", "--kubeconfig", kubeconfig, "--node-name", "node-1",
                              "--json"])
    assert code == 0, err
    [entry] = json.loads(out)["servicePorts"]
    assert (entry["namespace"], entry["name"]) == ("ns", "web")
    assert entry["clusterEndpoints"] == ["10.0.1.1:8080"]


def test_trace_node_port_needs_the_node_ip_the_kernel_serves(kubeconfig: str) -> None:
    base = ["trace", "--kubeconfig", kubeconfig, "--node-name", "node-1",
            "--src", "203.0.113.2", "--dst", "192.168.0.2", "--dport", "30080", "--json"]
    code, out, err = run_cli(base)
    assert code == 0, err
    assert json.loads(out)["verdict"] == "NO_MATCH"  # the Node says 192.168.0.10
    code, out, err = run_cli([*base, "--node-ip", "192.168.0.2"])
    assert code == 0, err
    assert json.loads(out) == {"verdict": "DNAT", "endpoints": ["10.0.1.1:8080"],
                               "masquerade": True}


def test_unreachable_api_server_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("pyagent.sources.kube_snapshot.TIMEOUT", 1.0)
    api = FakeKubeAPI().start()
    cfg = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    api.stop()
    code, _, err = run_cli(["plan", "--kubeconfig", cfg, "--node-name", "node-1"])
    assert code == 2 and "API server" in err and "no complete list" in err


def test_no_source_at_all_is_a_usage_error() -> None:
    code, _, err = run_cli(["plan", "--node-name", "node-1"])
    assert code == 2 and "--manifests DIR or --kubeconfig FILE" in err
