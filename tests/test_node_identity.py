"""Node identity as kube-proxy derives it, in the two-node lab: the agent is
started without --node-ip and without --interface, and still serves
NodePorts to a client outside the cluster. The node IPs come from the Node
object (InternalIP first, one per family), the TC attach point from the
interface that holds the primary node IP (ebpf mode).

(Before: without --node-ip the agent knew no node IP, so no NodePort was
served at all; without --interface no TC program was attached.)"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from pyagent.lab.cluster import CLIENT_IP4, CLUSTER_CIDR4, Cluster

pytestmark = pytest.mark.root

NODE_PORT = 30080
MODES = ("ebpf", "iptables", "nftables")


def manifests(c: Cluster) -> list[dict]:
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name},
              # ExternalIP first in the list: kube-proxy still takes the InternalIP.
              "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.7"},
                                       {"type": "Hostname", "address": n.name},
                                       {"type": "InternalIP", "address": n.ip4},
                                       {"type": "InternalIP", "address": n.ip6}]}}
             for n in c.nodes]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                               "protocol": "TCP", "nodePort": NODE_PORT}]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": "web-1", "namespace": "d",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [p.ip4], "nodeName": c.node_of(p).name,
                          "conditions": {"ready": True}} for p in c.pods]}
    return [*nodes, svc, eps]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=1) as c:
        # A node has a default route; the fabric's client stands in for the router.
        c.node_exec(0, "ip", "route", "add", "default", "via", CLIENT_IP4)
        yield c


@pytest.mark.parametrize("mode", MODES)
def test_node_ports_served_without_node_ip_or_interface(cluster: Cluster, mode: str) -> None:
    node = cluster.nodes[0]
    mdir = cluster.tmp / f"m-{mode}"
    mdir.mkdir()
    (mdir / "all.yaml").write_text(yaml.safe_dump_all(manifests(cluster)))
    log = cluster.tmp / f"agent-{mode}.log"
    args = ["run", "--manifests", str(mdir), "--node-name", node.name, "--mode", mode,
            "--cluster-cidr", CLUSTER_CIDR4, "--bpffs", str(node.bpffs / "pyagent"),
            "--cgroup", str(node.cgroup), "--healthz-bind-address", "127.0.0.1:0",
            "--metrics-bind-address", "127.0.0.1:0"]
    proc = cluster.agent(0, args, stderr=log.open("w"))
    try:
        res = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            res = cluster.client(node.ip4, NODE_PORT, count=20, timeout=1)
            if res.total == 20:
                break
            time.sleep(0.5)
        assert res is not None and res.total == 20, (res, log.read_text()[-3000:])
        # Both backends, the remote one too (masqueraded, eTP=Cluster).
        assert set(res.counts) == {p.name for p in cluster.pods}, res
        text = log.read_text()
        assert f"primary {node.ip4}, {node.ip6} from the Node object" in text, text
        assert "203.0.113.7" not in text.split("node IPs:")[1].split("\n")[0]
        if mode == "ebpf":
            assert "interface eth0 holds node IP" in text, text
            assert "interfaces=eth0" in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        cleanup = ["cleanup", "--mode", mode, "--bpffs", str(node.bpffs / "pyagent"),
                   "--cgroup", str(node.cgroup), *(["--interface", "eth0"]
                                                    if mode == "ebpf" else [])]
        cluster.agent(0, cleanup, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).wait(timeout=60)
