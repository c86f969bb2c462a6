"""External traffic to ClusterIPs through `pyagent run` (TC path) in the
two-node lab: real TCP connections and UDP datagrams from the lab's
external client to a dual-stack ClusterIP, served by a pod on node0 (local)
and one on node1 (remote).

kube-proxy's rule decides the source the backends see: without a
local-traffic detector (and without masqueradeAll) the flows are only
DNATed and the backends see the client; with one (--cluster-cidr) they are
masqueraded to node0. The client routes the service CIDRs to node0 (as an
upstream router would), and node1 routes the client back via node0, so an
unmasqueraded reply from the remote backend returns through the node that
translated it (kube-proxy needs that too).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml
from agentlab import dual_stack, sync_marker, wait_for_marker

from pyagent.lab.cluster import Cluster

pytestmark = pytest.mark.root

CIP4, CIP6 = "10.96.5.1", "fd00:96::501"
SERVICE_CIDRS = ("10.96.0.0/16", "fd00:96::/112")
PORTS = [("http", "TCP", 80, 8080), ("dns", "UDP", 53, 5353)]


def objects(c: Cluster) -> list[dict]:
    n0, n1 = c.nodes
    return dual_stack("web", "d", (CIP4, CIP6), PORTS,
                      [(n0.name, n0.pods[0]), (n1.name, n1.pods[0])])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=1, tcp_ports=(8080,), udp_ports=(5353,)) as c:
        n0 = c.nodes[0]
        c.route_vips(0, SERVICE_CIDRS)
        c.node_exec(1, "ip", "route", "add", f"{c.client_ip4}/32", "via", n0.ip4)
        c.node_exec(1, "ip", "-6", "route", "add", f"{c.client_ip6}/128", "via", n0.ip6)
        yield c


class Agent:
    """`pyagent run` on node0, with or without a local-traffic detector."""

    def __init__(self, c: Cluster, detector: bool) -> None:
        self.c, self.node, self.masquerades = c, c.nodes[0], detector
        self.dir = c.tmp / f"cip-{detector}"
        self.dir.mkdir()
        self.log = c.tmp / f"cip-{detector}.log"
        args = self.node.agent_args()
        if not detector:
            while "--cluster-cidr" in args:
                i = args.index("--cluster-cidr")
                del args[i:i + 2]
        self.proc = c.agent(0, ["run", "--manifests", str(self.dir), *args,
                                "--pod-interface", "br0", "--healthz-bind-address",
                                "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"],
                            stderr=self.log.open("w"))

    def apply(self, objs: list[dict]) -> None:
        marker = sync_marker(1)
        tmp = self.dir / ".m.tmp"
        tmp.write_text(yaml.safe_dump_all([*objs, marker]))
        tmp.rename(self.dir / "m.yaml")
        wait_for_marker(str(self.node.bpffs), marker, self.proc, self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs",
                        str(self.node.bpffs)], capture_output=True, check=False)


@pytest.fixture(scope="module", params=[False, True], ids=["no-detector", "cluster-cidr"])
def agent(request, cluster: Cluster) -> Iterator[Agent]:
    a = Agent(cluster, request.param)
    try:
        a.apply(objects(cluster))
        yield a
    finally:
        a.stop()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("fam", [4, 6], ids=["v4", "v6"])
def test_external_client_reaches_the_cluster_ip(cluster: Cluster, agent: Agent, fam: int,
                                                proto: str) -> None:
    n0, n1 = cluster.nodes
    vip = CIP4 if fam == 4 else CIP6
    port = 80 if proto == "tcp" else 53
    udp = {"connected": True} if proto == "udp" else {}
    res = cluster.client(vip, port, proto, count=24, timeout=3, **udp)
    assert not res.errors, (res.errors, agent.log.read_text()[-2000:])
    assert set(res.counts) == {n0.pods[0].name, n1.pods[0].name}, res.counts  # local and remote
    seen = {d["seen_client"] for d in res.details}
    if agent.masquerades:
        assert seen == {n0.ip4 if fam == 4 else n0.ip6}, seen
    else:
        assert seen == {cluster.client_ip4 if fam == 4 else cluster.client_ip6}, seen
