"""The socket LB's scope through `pyagent run` in the two-node lab: pods it
leaves alone connect to the ClusterIP itself (a sidecar in the pod sees the
VIP as destination) and TC on the pod interfaces balances their packets.

Two agents on node0, one at a time:
- host-namespace-only (--bpf-lb-sock-hostns-only): every pod goes by TC,
  the node's own connections still by the socket LB; the pod interfaces
  given as a pattern (p+), so a pod created later gets the programs too;
- per-pod opt-out: the default scope, with pod0's namespace excluded by
  `pyagent socket-lb exclude`; pod1 stays on the socket LB.

The Service has three endpoints: pod0 itself (hairpin, masqueraded so the
reply comes back through node0), pod1 (same node) and a pod on node1. All
client processes run in node0's cgroup, where the socket LB is attached.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml
from agentlab import dual_stack, sync_marker, wait_for_marker

from pyagent.lab import sidecar
from pyagent.lab.cluster import Cluster
from pyagent.lab.single_node import ClientResult

pytestmark = pytest.mark.root

CIP4, CIP6 = "10.96.7.1", "fd00:96::701"
PORTS = [("http", "TCP", 80, 8080), ("dns", "UDP", 53, 5353)]
SIDECAR_PORT = 15001


def objects(c: Cluster) -> list[dict]:
    n0, n1 = c.nodes
    return dual_stack("web", "m", (CIP4, CIP6), PORTS,
                      [(n0.name, n0.pods[0]), (n0.name, n0.pods[1]), (n1.name, n1.pods[0])])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=2, tcp_ports=(8080,), udp_ports=(5353,)) as c:
        yield c


class Sidecar:
    """The lab sidecar in a pod, behind an nft redirect of TCP to the VIPs."""

    def __init__(self, c: Cluster, pod_ns: str, cgroup: Path) -> None:
        self.c, self.ns = c, pod_ns
        subprocess.run(["ip", "netns", "exec", pod_ns, "nft", "-f", "-"], check=True, text=True,
                       input=sidecar.nft_rules([CIP4, CIP6], 80, SIDECAR_PORT))
        self.proc = c.popen([sys.executable, "-m", "pyagent.lab.sidecar", "--port",
                             str(SIDECAR_PORT)], ns=pod_ns, cgroup=cgroup,
                            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def records(self, n: int, timeout: float = 10) -> list[dict]:
        """The next n connection records (fewer if none come in time)."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Empty):
            while len(out) < n:
                out.append(json.loads(self.lines.get(
                    timeout=max(0.0, deadline - time.monotonic()))))
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet",
                        "pyagent_lab_mesh"], check=False, capture_output=True)


class Agent:
    """`pyagent run` on node0: "hostns-only", "opt-out" (pod0 excluded) or
    "all" (the default scope)."""

    def __init__(self, c: Cluster, mode: str, name: str = "", generation: int = 1) -> None:
        self.c, self.mode, self.node = c, mode, c.nodes[0]
        name = name or mode
        self.dir = c.tmp / f"scope-{name}"
        self.dir.mkdir()
        self.log = c.tmp / f"scope-{name}.log"
        if mode == "hostns-only":  # pod links by pattern, followed as pods come
            extra, pods = ["--bpf-lb-sock-hostns-only"], ["--pod-interface", "p+"]
        else:
            extra, pods = [], [a for link in self.node.pod_links for a in ("--pod-interface", link)]
        self.proc = c.agent(0, ["run", "--manifests", str(self.dir), *self.node.agent_args(),
                                *pods, *extra, "--healthz-bind-address", "127.0.0.1:0",
                                "--metrics-bind-address", "127.0.0.1:0"],
                            stderr=self.log.open("w"))
        marker = sync_marker(generation)  # a restart's own: the pins hold the last one
        (self.dir / ".m.tmp").write_text(yaml.safe_dump_all([*objects(c), marker]))
        (self.dir / ".m.tmp").rename(self.dir / "m.yaml")
        wait_for_marker(str(self.node.bpffs), marker, self.proc, self.log)
        # the pods the socket LB leaves alone
        self.tc_pods = [p.name for p in self.node.pods] if mode == "hostns-only" else []
        if mode == "opt-out":
            self.socket_lb(["exclude", f"/run/netns/{self.node.pods[0].ns}"])
            self.tc_pods = [self.node.pods[0].name]

    def socket_lb(self, args: list[str]) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "pyagent", "socket-lb", *args[:1],
                            "--bpffs", str(self.node.bpffs), *args[1:]],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r

    def terminate(self) -> None:
        """Stop the agent as a restart does: pins, links and filters stay."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def balancing(self) -> dict:
        r = subprocess.run([sys.executable, "-m", "pyagent", "status", "--json", "--bpffs",
                            str(self.node.bpffs)], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout)["balancing"]

    def stop(self) -> None:
        self.terminate()
        # nsenter: the TC filters live in node0's namespace (p+ follows its links)
        subprocess.run(["nsenter", f"--net=/run/netns/{self.node.ns}", sys.executable, "-m",
                        "pyagent", "cleanup", "--bpffs", str(self.node.bpffs), "--cgroup",
                        str(self.node.cgroup), "--interface", "eth0", "--interface", "p+"],
                       capture_output=True, check=False)


@pytest.fixture(scope="module", params=["hostns-only", "opt-out"])
def agent(request, cluster: Cluster) -> Iterator[Agent]:
    a = Agent(cluster, request.param)
    try:
        yield a
    finally:
        a.stop()


def client(c: Cluster, ns: str, dst: str, port: int, proto: str, count: int) -> ClientResult:
    """The lab client in a namespace of node0, inside node0's cgroup."""
    cmd = [sys.executable, "-m", "pyagent.lab.client", "--dst", dst, "--port", str(port),
           "--proto", proto, "--count", str(count), "--timeout", "3"]
    if proto == "udp":
        cmd.append("--connected")
    res = c.run(cmd, ns=ns, cgroup=c.nodes[0].cgroup)
    assert res.returncode == 0, res.stderr
    return ClientResult(**json.loads(res.stdout))


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("fam", [4, 6], ids=["v4", "v6"])
def test_pods_left_to_tc_reach_every_backend(cluster: Cluster, agent: Agent, fam: int,
                                             proto: str) -> None:
    """Hairpin, same-node and remote backends, the VIP as the peer, the
    pod's own address as the source the backend sees (hairpin: node0)."""
    n0 = cluster.nodes[0]
    vip = CIP4 if fam == 4 else CIP6
    for pod in n0.pods:
        res = client(cluster, pod.ns, vip, 80 if proto == "tcp" else 53, proto, 30)
        assert not res.errors, (pod.name, res.errors, agent.log.read_text()[-2000:])
        want = {n0.pods[0].name, n0.pods[1].name, cluster.nodes[1].pods[0].name}
        assert set(res.counts) == want, res.counts
        assert {d["peer"] for d in res.details} == {vip}
        own = ip_address(pod.ip4 if fam == 4 else pod.ip6)
        node = ip_address(n0.ip4 if fam == 4 else n0.ip6)
        for d in res.details:
            hairpin = d["pod"] == pod.name
            seen = ip_address(d["seen_client"])
            if pod.name in agent.tc_pods:
                assert seen == (node if hairpin else own), d
            else:  # the socket LB: the pod reaches itself inside its namespace
                assert seen == own, d


@pytest.mark.parametrize("fam", [4, 6], ids=["v4", "v6"])
def test_a_sidecar_sees_the_vip_only_where_the_socket_lb_stays_out(
        cluster: Cluster, agent: Agent, fam: int) -> None:
    n0 = cluster.nodes[0]
    vip = CIP4 if fam == 4 else CIP6
    for pod in n0.pods:
        car = Sidecar(cluster, pod.ns, n0.cgroup)
        try:
            res = client(cluster, pod.ns, vip, 80, "tcp", 12)
            assert not res.errors, res.errors
            assert len(set(res.counts)) > 1, res.counts  # still balanced
            if pod.name in agent.tc_pods:
                seen = car.records(12)
                assert [r.get("original") for r in seen] == [[vip, 80]] * 12, seen
            else:  # connect() already named a backend: the mesh never saw it
                assert car.records(1, timeout=1) == []
        finally:
            car.stop()


def test_the_node_itself_stays_on_the_socket_lb(cluster: Cluster, agent: Agent) -> None:
    """No TC program translates the node's own output: only the socket LB
    can have served these."""
    n0 = cluster.nodes[0]
    for vip in (CIP4, CIP6):
        res = client(cluster, n0.ns, vip, 80, "tcp", 40)
        assert not res.errors, res.errors
        assert len(res.counts) == 3, res.counts


def test_status_and_include(cluster: Cluster, agent: Agent) -> None:
    status = json.loads(agent.socket_lb(["status", "--json"]).stdout)
    assert status["hostNamespaceOnly"] == (agent.mode == "hostns-only")
    assert len(status["excludedNetnsCookies"]) == (agent.mode == "opt-out")
    assert agent.balancing() == {"socketLB": "host namespace only" if agent.mode == "hostns-only"
                 else "every namespace", "socketLBExcluded": int(agent.mode == "opt-out"),
                 "lbMode": "snat", "podLB": True, "xdp": {}}
    if agent.mode != "opt-out":
        return
    pod0 = cluster.nodes[0].pods[0]
    agent.socket_lb(["include", f"/run/netns/{pod0.ns}"])
    try:
        assert json.loads(agent.socket_lb(["status", "--json"]).stdout)[
            "excludedNetnsCookies"] == []
        car = Sidecar(cluster, pod0.ns, cluster.nodes[0].cgroup)
        try:
            res = client(cluster, pod0.ns, CIP4, 80, "tcp", 10)
            assert not res.errors and car.records(1, timeout=1) == []
        finally:
            car.stop()
    finally:
        agent.socket_lb(["exclude", f"/run/netns/{pod0.ns}"])


def test_a_pod_created_after_the_start_is_served(cluster: Cluster, agent: Agent) -> None:
    """Its link appears while the agent runs. Host-namespace-only: the p+
    pattern puts the TC programs on it and TC balances it (its sidecar sees
    the VIP). Opt-out: it has not opted out, so the socket LB serves it.
    Last in this module: the pods stay."""
    pod = cluster.add_pod(0, f"node0-late-{agent.mode}")
    hostns = agent.mode == "hostns-only"
    if hostns:
        agent.tc_pods.append(pod.name)
    car = Sidecar(cluster, pod.ns, cluster.nodes[0].cgroup)
    try:
        for vip in (CIP4, CIP6):
            res = client(cluster, pod.ns, vip, 80, "tcp", 40)
            assert not res.errors, (res.errors, agent.log.read_text()[-2000:])
            assert len(res.counts) == 3, res.counts
            seen = [r.get("original") for r in car.records(40 if hostns else 1,
                                                           timeout=10 if hostns else 1)]
            assert seen == ([[vip, 80]] * 40 if hostns else []), seen
    finally:
        car.stop()
    if hostns:
        link = cluster.nodes[0].pod_links[-1]
        assert f"pod interface {link}: TC programs attached" in agent.log.read_text()
