"""Forwarded Service traffic on a node whose filter FORWARD policy is DROP
(Docker sets that), through each packet mode: kube-proxy's KUBE-FORWARD
equivalent accepts it (masquerade-marked, established/related, and DNATed to
a pod). In the nftables mode the accepts have to sit in the iptables filter
table, where the DROP policy is: an accept in pyagent's own nft table would
not override it.

Two-node lab; the agent runs on node0, whose FORWARD policy is DROP (both
families, set with the default iptables binary, as Docker does):
- NodePort from the external client to a backend on node1 (masqueraded);
- a pod on node0 to the ClusterIP, backend on node1 (not masqueraded: a pod
  source), the "pod to remote" case.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pyagent.lab.cluster import CLUSTER_CIDR4, Cluster

pytestmark = pytest.mark.root


def _ipvs_available() -> bool:
    if Path("/proc/net/ip_vs").exists():
        return True
    return subprocess.run(["modprobe", "-n", "ip_vs"], capture_output=True,
                          check=False).returncode == 0


MODES = ("iptables", "nftables",
         *([pytest.param("ipvs", marks=pytest.mark.vm)] if _ipvs_available() else []))
VIP, NODE_PORT = "10.96.0.10", 30080


def manifests(c: Cluster) -> list[dict]:
    remote = c.nodes[1].pods[0]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
           "spec": {"type": "NodePort", "clusterIP": VIP, "clusterIPs": [VIP],
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                               "protocol": "TCP", "nodePort": NODE_PORT}]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": "web-1", "namespace": "d",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [remote.ip4], "nodeName": "node1",
                          "conditions": {"ready": True}}]}
    return [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node0"}}, svc, eps]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=1) as c:
        for cmd in ("iptables", "ip6tables"):
            c.node_exec(0, cmd, "-w", "-P", "FORWARD", "DROP")
        yield c


def _wait_served(c: Cluster, proc: subprocess.Popen, log: Path) -> None:
    """Until the NodePort is in the rules (iptables, nftables) or IPVS."""
    deadline = time.monotonic() + 60 * float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1"))
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        out = c.node_exec(0, "iptables-save", check=False).stdout + c.node_exec(
            0, "nft", "list", "ruleset", check=False).stdout
        ipvs = c.node_exec(0, "cat", "/proc/net/ip_vs", check=False).stdout
        if str(NODE_PORT) in out or f":{NODE_PORT:04X}" in ipvs:
            return
        time.sleep(0.3)
    raise AssertionError(f"agent did not program the NodePort\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("mode", MODES)
def test_forwarded_service_traffic_passes_a_drop_policy(cluster: Cluster, mode: str) -> None:
    node = cluster.nodes[0]
    mdir = cluster.tmp / f"m-{mode}"
    mdir.mkdir()
    (mdir / "all.yaml").write_text(yaml.safe_dump_all(manifests(cluster)))
    log = cluster.tmp / f"agent-{mode}.log"
    proc = cluster.agent(0, ["run", "--manifests", str(mdir), "--node-name", "node0",
                             "--node-ip", node.ip4, "--cluster-cidr", CLUSTER_CIDR4,
                             "--mode", mode, "--bpffs", str(node.bpffs / "pyagent"),
                             "--healthz-bind-address", "127.0.0.1:0",
                             "--metrics-bind-address", "127.0.0.1:0"], stderr=log.open("w"))
    remote = cluster.nodes[1].pods[0].name
    try:
        _wait_served(cluster, proc, log)
        time.sleep(0.5)
        external = cluster.client(node.ip4, NODE_PORT, count=10, timeout=2)
        assert external.counts == {remote: 10}, (external, log.read_text()[-2000:])
        pod = cluster.client(VIP, 80, count=10, timeout=2, ns=node.pods[0].ns)
        assert pod.counts == {remote: 10}, (pod, log.read_text()[-2000:])
        policy = cluster.node_exec(0, "iptables", "-w", "-S", "FORWARD").stdout
        assert "-P FORWARD DROP" in policy  # still DROP: nothing was opened wholesale
    finally:
        proc.terminate()
        proc.wait(timeout=20 * float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1")))
        cluster.agent(0, ["cleanup", "--mode", mode, "--bpffs", str(node.bpffs / "pyagent")],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(
            timeout=60 * float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1")))
    # cleanup takes the accepts away again (and the policy stays as it was)
    left = cluster.node_exec(0, "iptables-save", "-t", "filter").stdout
    assert "PYAGENT" not in left and "PYANFT" not in left and "PYAIPVS" not in left, left
    assert ":FORWARD DROP" in left
