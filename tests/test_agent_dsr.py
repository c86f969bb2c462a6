"""Direct Server Return through `pyagent run` in the two-node lab: the
external client reaches node0's NodePort, the backends run on node1, and
both nodes run the agent with the same --bpf-lb-mode.

- snat (the control): masqueraded to node0, every reply crosses node0;
- dsr: TCP and UDP reach the backend with the client's address, and the
  replies go from node1 straight to the client (none crosses node0);
- hybrid: DSR for TCP, SNAT for UDP.

Replies crossing node0 are counted by an nft counter in node0's namespace
(prerouting, after TC ingress: sources are still the backends there).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
import yaml
from agentlab import dual_stack, sync_marker, wait_for_marker

from pyagent.lab.cluster import Cluster

pytestmark = pytest.mark.root

CIP4, CIP6 = "10.96.9.1", "fd00:96::901"
PORTS = [("http", "TCP", 80, 8080, 30080), ("dns", "UDP", 53, 5353, 30053)]
COUNTERS = "pyagent_lab_count"


LOCAL_CIP4, LOCAL_CIP6 = "10.96.9.2", "fd00:96::902"
LOCAL_PORTS = [("http", "TCP", 80, 8080, 30081), ("dns", "UDP", 53, 5353, 30054)]


def objects(c: Cluster) -> list[dict]:
    n0, n1 = c.nodes
    return [*dual_stack("web", "d", (CIP4, CIP6), PORTS, [(n1.name, p) for p in n1.pods],
                        type="NodePort", externalTrafficPolicy="Cluster"),
            # eTP=Local: node0's own pod, whatever the mode
            *dual_stack("local", "d", (LOCAL_CIP4, LOCAL_CIP6), LOCAL_PORTS,
                        [(n0.name, n0.pods[0])], type="NodePort",
                        externalTrafficPolicy="Local")]


def count_rules(c: Cluster) -> str:
    pods = c.nodes[1].pods
    v4 = ", ".join(p.ip4 for p in pods)
    v6 = ", ".join(p.ip6 for p in pods)
    return (f"table inet {COUNTERS} {{\n  counter replies {{}}\n"
            "  chain pre {\n    type filter hook prerouting priority -300; policy accept;\n"
            f"    ip saddr {{ {v4} }} counter name replies\n"
            f"    ip6 saddr {{ {v6} }} counter name replies\n  }}\n}}\n")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=2, tcp_ports=(8080,), udp_ports=(5353,)) as c:
        subprocess.run(["ip", "netns", "exec", c.nodes[0].ns, "nft", "-f", "-"], check=True,
                       text=True, input=count_rules(c))
        yield c


def replies_through_node0(c: Cluster) -> int:
    out = c.node_exec(0, "nft", "-j", "list", "counter", "inet", COUNTERS, "replies").stdout
    return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)


class Agents:
    """`pyagent run` on both nodes, one lab directory of manifests each."""

    def __init__(self, c: Cluster, mode: str) -> None:
        self.c, self.mode = c, mode
        self.procs, self.logs = [], []
        for i, node in enumerate(c.nodes):
            d = c.tmp / f"dsr-{mode}-{i}"
            d.mkdir()
            log = c.tmp / f"dsr-{mode}-{i}.log"
            self.logs.append(log)
            proc = c.agent(i, ["run", "--manifests", str(d), *node.agent_args(),
                               "--pod-interface", "br0", "--bpf-lb-mode", mode,
                               "--healthz-bind-address", "127.0.0.1:0",
                               "--metrics-bind-address", "127.0.0.1:0"],
                           stderr=log.open("w"))
            self.procs.append(proc)
            marker = sync_marker(1)
            (d / ".m.tmp").write_text(yaml.safe_dump_all([*objects(c), marker]))
            (d / ".m.tmp").rename(d / "m.yaml")
            wait_for_marker(str(node.bpffs), marker, proc, log)

    def tail(self) -> str:
        return "\n".join(log.read_text()[-1500:] for log in self.logs)

    def stop(self) -> None:
        for proc, node in zip(self.procs, self.c.nodes, strict=True):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
            subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs",
                            str(node.bpffs), "--interface", "eth0", "--interface", "br0"],
                           capture_output=True, check=False)


@pytest.fixture(scope="module", params=["snat", "dsr", "hybrid"])
def agents(request, cluster: Cluster) -> Iterator[Agents]:
    a = Agents(cluster, request.param)
    try:
        yield a
    finally:
        a.stop()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("fam", [4, 6], ids=["v4", "v6"])
def test_remote_backends_answer_the_client_directly_by_dsr(cluster: Cluster, agents: Agents,
                                                           fam: int, proto: str) -> None:
    n0, n1 = cluster.nodes
    node_ip = n0.ip4 if fam == 4 else n0.ip6
    port = 30080 if proto == "tcp" else 30053
    dsr = agents.mode == "dsr" or (agents.mode == "hybrid" and proto == "tcp")
    before = replies_through_node0(cluster)
    udp = {"connected": True} if proto == "udp" else {}
    res = cluster.client(node_ip, port, proto, count=20, timeout=3, **udp)
    crossed = replies_through_node0(cluster) - before
    assert not res.errors, (res.errors, agents.tail())
    assert set(res.counts) == {p.name for p in n1.pods}, res.counts
    client = cluster.client_ip4 if fam == 4 else cluster.client_ip6
    seen = {ip_address(d["seen_client"]) for d in res.details}
    assert seen == {ip_address(client if dsr else node_ip)}, seen
    assert {ip_address(d["peer"]) for d in res.details} == {ip_address(node_ip)}
    if dsr:
        assert crossed == 0, crossed
    else:  # the control: the counter does see replies through node0
        assert crossed >= 20, crossed


def test_status_shows_the_mode(cluster: Cluster, agents: Agents) -> None:
    for node in cluster.nodes:
        r = subprocess.run([sys.executable, "-m", "pyagent", "status", "--json", "--bpffs",
                            str(node.bpffs)], capture_output=True, text=True, timeout=60)
        b = json.loads(r.stdout)["balancing"]
        assert (b["lbMode"], b["socketLB"], b["podLB"]) == (agents.mode, "every namespace",
                                                           False)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("fam", [4, 6], ids=["v4", "v6"])
def test_etp_local_keeps_the_client_on_the_local_pod_in_every_mode(
        cluster: Cluster, agents: Agents, fam: int, proto: str) -> None:
    n0 = cluster.nodes[0]
    node_ip = n0.ip4 if fam == 4 else n0.ip6
    udp = {"connected": True} if proto == "udp" else {}
    res = cluster.client(node_ip, 30081 if proto == "tcp" else 30054, proto, count=10,
                         timeout=3, **udp)
    assert not res.errors, (res.errors, agents.tail())
    assert set(res.counts) == {n0.pods[0].name}, res.counts
    client = cluster.client_ip4 if fam == 4 else cluster.client_ip6
    assert {ip_address(d["seen_client"]) for d in res.details} == {ip_address(client)}
