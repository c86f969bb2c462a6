"""XDP acceleration through `pyagent run --bpf-lb-acceleration` in the
two-node lab: node0's agent runs lb_xdp_ingress on its uplink in front of
TC; the external client reaches node0's NodePorts (eTP=Local: node0's pod;
eTP=Cluster: node1's pods, masqueraded through node0).

Every veth of the lab sends complete checksums and verifies what it
receives (offloads off), as a NIC's wire traffic would be: a checksum XDP
got wrong would lose the packet, in either direction (the replies of
node1's pods are translated back by XDP too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_address

import bpfmaps
import pytest
import yaml
from agentlab import dual_stack, sync_marker, wait_for_marker

from pyagent.lab.cluster import Cluster

pytestmark = pytest.mark.root

CLUSTER_PORTS = [("http", "TCP", 80, 8080, 30180), ("dns", "UDP", 53, 5353, 30153)]
LOCAL_PORTS = [("http", "TCP", 80, 8080, 30181), ("dns", "UDP", 53, 5353, 30154)]
NODEPORT = {("cluster", "tcp"): 30180, ("cluster", "udp"): 30153,
            ("local", "tcp"): 30181, ("local", "udp"): 30154}

# Another tool's XDP program, to be left alone.
OTHER_XDP = """
import sys
from bcc import BPF
from ebpf import xdp
b = BPF(text="int other_xdp(struct xdp_md *ctx) { return XDP_PASS; }")
fn = b.load_func("other_xdp", BPF.XDP)
with xdp.iproute(None) as ipr:
    idx = xdp.ifindex(ipr, sys.argv[1])
    if sys.argv[2] == "attach":
        xdp.attach(ipr, idx, fn.fd, xdp.NATIVE)
    else:
        xdp.detach(ipr, idx, xdp.NATIVE)
"""


def objects(c: Cluster) -> list[dict]:
    n0, n1 = c.nodes
    return [*dual_stack("web", "x", ("10.96.8.1", "fd00:96::801"), CLUSTER_PORTS,
                        [(n1.name, p) for p in n1.pods], type="NodePort",
                        externalTrafficPolicy="Cluster"),
            *dual_stack("local", "x", ("10.96.8.2", "fd00:96::802"), LOCAL_PORTS,
                        [(n0.name, n0.pods[0])], type="NodePort",
                        externalTrafficPolicy="Local")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=2, tcp_ports=(8080,), udp_ports=(5353,)) as c:
        c.wire_checksums()
        yield c


class Agent:
    """`pyagent run` on node0 with an acceleration setting."""

    def __init__(self, c: Cluster, setting: str, gen: int) -> None:
        self.c, self.setting = c, setting
        node = c.nodes[0]
        d = c.tmp / f"xdp-{setting}-{gen}"
        d.mkdir()
        self.log = c.tmp / f"xdp-{setting}-{gen}.log"
        self.proc = c.agent(0, ["run", "--manifests", str(d), *node.agent_args(),
                                "--pod-interface", "br0", "--bpf-lb-acceleration", setting,
                                "--healthz-bind-address", "127.0.0.1:0",
                                "--metrics-bind-address", "127.0.0.1:0"],
                            stderr=self.log.open("w"))
        marker = sync_marker(gen)
        (d / ".m.tmp").write_text(yaml.safe_dump_all([*objects(c), marker]))
        (d / ".m.tmp").rename(d / "m.yaml")
        wait_for_marker(str(node.bpffs), marker, self.proc, self.log)

    def tail(self) -> str:
        return self.log.read_text()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def cleanup(c: Cluster) -> None:
    subprocess.run(["ip", "netns", "exec", c.nodes[0].ns, sys.executable, "-m", "pyagent",
                    "cleanup", "--bpffs",
                    str(c.nodes[0].bpffs), "--interface", "eth0", "--interface", "br0"],
                   capture_output=True, check=False)


def xdp_on(c: Cluster, ifname: str = "eth0") -> dict:
    """`ip -d link`'s view of node0's uplink: {"mode": ..., "name": ...} or {}."""
    out = c.node_exec(0, "ip", "-j", "-d", "link", "show", ifname).stdout
    x = json.loads(out)[0].get("xdp")
    if not x:
        return {}
    return {"mode": x.get("mode"), "name": x.get("prog", {}).get("name", "")}


def stats(c: Cluster) -> dict[str, int]:
    from pyagent.dataplanes.ebpf import tc

    maps = tc.open_pinned_tc_maps(str(c.nodes[0].bpffs))
    try:
        return bpfmaps.tc_stats(maps)
    finally:
        maps.close()


@pytest.fixture(scope="class", params=["native", "generic"])
def agent(request, cluster: Cluster) -> Iterator[Agent]:
    a = Agent(cluster, request.param, 1 if request.param == "native" else 2)
    try:
        yield a
    finally:
        a.stop()
        cleanup(cluster)


class TestAccelerated:
    """The agent with native, then generic XDP: torn down before the tests
    below, which start their own."""

    def test_xdp_runs_where_asked(self, cluster: Cluster, agent: Agent) -> None:
        # ip(8) says "xdp" for native, "xdpgeneric" for generic
        want = 1 if agent.setting == "native" else 2
        assert xdp_on(cluster) == {"mode": want, "name": "lb_xdp_ingress"}, agent.tail()
        assert xdp_on(cluster, "br0") == {}  # pod links: TC only
        assert f"eth0: XDP {agent.setting}" in agent.log.read_text()

    @pytest.mark.parametrize("policy", ["local", "cluster"])
    @pytest.mark.parametrize("proto", ["tcp", "udp"])
    @pytest.mark.parametrize("fam", [4, 6], ids=["v4", "v6"])
    def test_nodeports_are_served_at_xdp(self, cluster: Cluster, agent: Agent, fam: int, proto: str,
                                         policy: str) -> None:
        n0, n1 = cluster.nodes
        node_ip = n0.ip4 if fam == 4 else n0.ip6
        before = stats(cluster)
        udp = {"connected": True} if proto == "udp" else {}
        res = cluster.client(node_ip, NODEPORT[policy, proto], proto, count=20, timeout=3, **udp)
        after = stats(cluster)
        assert not res.errors, (res.errors, agent.tail())
        pods = [n0.pods[0]] if policy == "local" else n1.pods
        assert set(res.counts) == {p.name for p in pods}, res.counts
        client = cluster.client_ip4 if fam == 4 else cluster.client_ip6
        seen = {ip_address(d["seen_client"]) for d in res.details}
        assert seen == {ip_address(client if policy == "local" else node_ip)}, seen
        # XDP did the ingress half: the client's packets and, masqueraded, the
        # backends' replies (at least one each way per connection) ...
        done = after["xdp_done"] - before["xdp_done"]
        assert done >= (40 if policy == "cluster" else 20), (before, after)
        # one decision per flow, not two (a client port reused from an earlier
        # test's still-tracked UDP flow is a conntrack hit, not a new flow)
        assert 0 < after["new"] - before["new"] <= 20, (before, after)
        # ... and TC skipped what XDP finished (it would count those as PASS:
        # their translated destination is no frontend)
        assert after["pass"] - before["pass"] <= 2, (before, after)


    def test_status_shows_xdp(self, cluster: Cluster, agent: Agent) -> None:
        r = subprocess.run([sys.executable, "-m", "pyagent", "status", "--json", "--bpffs",
                            str(cluster.nodes[0].bpffs)], capture_output=True, text=True,
                           timeout=60)
        assert json.loads(r.stdout)["balancing"]["xdp"] == {"eth0": agent.setting}, r.stdout

    def test_metrics_count_what_xdp_finished(self, cluster: Cluster, agent: Agent) -> None:
        from pyagent.observe import statusfile

        port = statusfile.read(str(cluster.nodes[0].bpffs))["metricsPort"]
        get = (f"import urllib.request; print(urllib.request.urlopen("
               f"'http://127.0.0.1:{port}/metrics').read().decode())")
        before = stats(cluster)["xdp_done"]
        body = cluster.node_exec(0, sys.executable, "-c", get).stdout
        after = stats(cluster)["xdp_done"]
        done = next(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                    if line.startswith('pyagent_north_south_packets_total{verdict="xdp_done"}'))
        assert 0 < before <= done <= after, (before, done, after)


def test_another_xdp_program_is_left_alone_and_tc_serves(cluster: Cluster) -> None:
    env = {"PYTHONPATH": ":".join(sys.path)}
    attach = ["ip", "netns", "exec", cluster.nodes[0].ns, sys.executable, "-c", OTHER_XDP,
              "eth0"]
    subprocess.run([*attach, "attach"], check=True, env=env)
    a = None
    try:
        a = Agent(cluster, "best-effort", 3)
        assert xdp_on(cluster)["name"] == "other_xdp"
        assert "eth0: TC only (another XDP program is attached" in a.log.read_text()
        res = cluster.client(cluster.nodes[0].ip4, NODEPORT["cluster", "tcp"], "tcp",
                             count=10, timeout=3)
        assert not res.errors and res.total == 10, (res.errors, a.tail())
    finally:
        if a is not None:
            a.stop()
        cleanup(cluster)
        assert xdp_on(cluster).get("name") == "other_xdp"  # cleanup leaves it too
        subprocess.run([*attach, "detach"], check=True, env=env)


def test_restart_without_xdp_detaches_it_and_keeps_serving(cluster: Cluster) -> None:
    a = Agent(cluster, "native", 4)
    try:
        assert xdp_on(cluster)["name"] == "lb_xdp_ingress"
        a.stop()
        b = Agent(cluster, "disabled", 5)
        try:
            assert xdp_on(cluster) == {}
            before = stats(cluster)
            res = cluster.client(cluster.nodes[0].ip4, NODEPORT["cluster", "tcp"], "tcp",
                                 count=10, timeout=3)
            assert not res.errors and res.total == 10, (res.errors, b.tail())
            assert stats(cluster)["xdp_done"] == before["xdp_done"]
        finally:
            b.stop()
    finally:
        a.stop()
        cleanup(cluster)
    assert xdp_on(cluster) == {}


