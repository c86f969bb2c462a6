"""kube-proxy's four local traffic detectors (detectLocalMode), in the packet
modes, with real connections: a pod's ClusterIP connection keeps its address,
anything else is masqueraded to the node's. The client pod is routed (its
own veth `r<lab id>...`, address 10.244.1.2); the backends sit on br0.

| detector | the client pod counts as a pod because |
| ClusterCIDR 10.244.0.0/16 | its address is in it |
| NodeCIDR (Node podCIDR 10.244.1.0/24) | its address is in the Node's podCIDR |
| InterfaceNamePrefix "r" | it comes in through r<...> |
| BridgeInterface br0 | it does not: it is not behind br0 (masqueraded) |
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from pyagent.lab import Lab

pytestmark = pytest.mark.root

VIP, NODE_IP, CLIENT = "10.96.0.10", "10.244.0.1", "10.244.1.2"
CASES = {
    "ClusterCIDR": (["--cluster-cidr", "10.244.0.0/16"], CLIENT),
    "NodeCIDR": (["--detect-local-mode", "NodeCIDR", "--cluster-cidr", "10.99.0.0/16"], CLIENT),
    "InterfaceNamePrefix": (["--detect-local-mode", "InterfaceNamePrefix",
                             "--pod-interface-name-prefix", "r"], CLIENT),
    "BridgeInterface": (["--detect-local-mode", "BridgeInterface",
                         "--pod-bridge-interface", "br0"], NODE_IP),
}


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, object]]:
    with Lab(pods=2) as lab:
        client = lab.add_routed_pod("client", CLIENT)
        lab.enable_routing()
        mdir = lab.tmp / "m"
        mdir.mkdir()
        backends = [p for p in lab.pods if p is not client]
        (mdir / "all.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
             "spec": {"podCIDRs": ["10.244.1.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "namespace": "d"},
             "spec": {"clusterIP": VIP, "ports": [{"name": "h", "port": 80, "targetPort": 8080,
                                                   "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "addressType": "IPv4",
             "metadata": {"name": "w-1", "namespace": "d",
                          "labels": {"kubernetes.io/service-name": "w"}},
             "ports": [{"name": "h", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": [p.ip4], "nodeName": "node-1"} for p in backends]}]))
        yield lab, client


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("detector", list(CASES))
def test_detector_decides_who_is_masqueraded(lab: tuple[Lab, object], mode: str,
                                             detector: str) -> None:
    lab_, client = lab
    flags, seen = CASES[detector]
    log = lab_.tmp / f"{mode}-{detector}.log"
    agent = lab_.agent(["run", "--manifests", str(lab_.tmp / "m"), "--node-name", "node-1",
                        "--node-ip", NODE_IP, "--mode", mode, *flags,
                        "--bpffs", str(lab_.bpffs / "pyagent"),
                        "--healthz-bind-address", "127.0.0.1:0",
                        "--metrics-bind-address", "127.0.0.1:0"], stderr=log.open("w"))
    try:
        deadline = time.monotonic() + 60
        while lab_.client(VIP, 80, count=1, timeout=0.5).total != 1:
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        res = lab_.client(VIP, 80, count=20, ns=client.ns)
        assert res.total == 20, (res, log.read_text()[-2000:])
        assert {d["seen_client"] for d in res.details} == {seen}, res.details[:3]
        node = lab_.client(VIP, 80, count=5)
        assert {d["seen_client"] for d in node.details} == {NODE_IP}
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        lab_.agent(["cleanup", "--mode", mode], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL).wait(timeout=60)
