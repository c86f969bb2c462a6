"""Differential conformance: the same Services, the same flows, every mode
available on this kernel (ebpf, iptables, nftables, userspace), the same
expected verdicts, backend sets and source addresses the backends see.

Topology: the namespace lab (node netns with pods pod0..pod2 on br0) plus a
routed client pod `client` (10.244.1.2). The agent runs in the node netns
with node IP 10.244.0.1 and cluster CIDR 10.244.0.0/16.

Known, documented differences (README, "Modes"):
- userspace proxies every connection, so backends always see the node's
  address (10.244.0.1), never the client pod's.
- ebpf: the socket load balancer serves processes in the lab cgroup in the
  node netns; flows from pod namespaces need the TC path (not built yet), so
  those rows are skipped for ebpf.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.root

MODES = ("ebpf", "iptables", "nftables", "userspace")
NODE_IP, CLIENT_IP = "10.244.0.1", "10.244.1.2"
WEB, EMPTY, STICKY, LOCAL = "10.96.0.10", "10.96.0.20", "10.96.0.30", "10.96.0.40"
NP_WEB, NP_EMPTY, NP_LOCAL = 30080, 30081, 30082
READY = {"pod0", "pod1"}  # pod2 is not ready in the web slice


def service(name: str, ip: str, ports: list[dict], **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "t"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                     "ports": ports, **spec}}


def slice_(name: str, eps: list[tuple[str, bool, str]], ports: list[dict]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": "t",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node}
                          for ip, ready, node in eps]}


HTTP = {"name": "http", "protocol": "TCP", "port": 8080}
DNS = {"name": "dns", "protocol": "UDP", "port": 5353}


def manifests() -> list[dict]:
    pods = [("10.244.0.10", True, "node-1"), ("10.244.0.11", True, "node-1"),
            ("10.244.0.12", False, "node-1")]
    return [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
        service("web", WEB, [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080,
             "nodePort": NP_WEB},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}],
            type="NodePort"),
        slice_("web", pods, [HTTP, DNS]),
        service("empty", EMPTY, [{"name": "http", "protocol": "TCP", "port": 80,
                                  "nodePort": NP_EMPTY}], type="NodePort"),
        service("sticky", STICKY, [{"name": "http", "protocol": "TCP", "port": 80}],
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
        slice_("sticky", [(ip, True, "node-1") for ip, _, _ in pods], [HTTP]),
        # eTP=Local: pod0 on this node, pod1 elsewhere. Pods are short-circuited
        # to both, unmasqueraded.
        service("local", LOCAL, [{"name": "http", "protocol": "TCP", "port": 80,
                                  "nodePort": NP_LOCAL}],
                type="NodePort", externalTrafficPolicy="Local"),
        slice_("local", [("10.244.0.10", True, "node-1"), ("10.244.0.11", True, "node-2")],
               [HTTP]),
    ]


class Env:
    def __init__(self, lab, mode: str, client_pod) -> None:
        self.lab, self.mode, self.client_pod = lab, mode, client_pod

    def node(self, dst: str, port: int, **kw):
        return self.lab.client(dst, port, **kw)

    def pod(self, dst: str, port: int, **kw):
        if self.mode == "ebpf":
            pytest.skip("ebpf: traffic from pod namespaces needs the TC path (not built yet)")
        return self.lab.client(dst, port, ns=self.client_pod.ns, **kw)

    def seen(self, from_pod: bool) -> str:
        """The source address backends see for an unmasqueraded flow."""
        if self.mode == "userspace" or not from_pod:
            return NODE_IP
        return CLIENT_IP


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} within {timeout}s")


@pytest.fixture(scope="module", params=MODES)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    from pyagent.lab import Lab

    mode = request.param
    with Lab(pods=3) as lab:
        client_pod = lab.add_routed_pod("client", CLIENT_IP)
        lab.enable_routing()
        mdir = lab.tmp / "manifests"
        mdir.mkdir()
        (mdir / "all.yaml").write_text(yaml.safe_dump_all(manifests()))
        bpffs = str(lab.bpffs / "pyagent")
        common = ["--cgroup", str(lab.cgroup), "--bpffs", bpffs]
        log = open(lab.tmp / "agent.log", "w")  # noqa: SIM115 (closed below)
        agent = lab.agent(["run", "--manifests", str(mdir), "--node-name", "node-1",
                           "--node-ip", NODE_IP, "--cluster-cidr", "10.244.0.0/16",
                           "--mode", mode, *common,
                           "--healthz-bind-address", "127.0.0.1:0",
                           "--metrics-bind-address", "127.0.0.1:0"],
                          stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: lab.client(WEB, 80, count=1, timeout=0.5).total == 1,
                     f"{mode}: agent did not program {WEB}:80")
            yield Env(lab, mode, client_pod)
        finally:
            agent.terminate()
            agent.wait(timeout=15)
            log.close()
            res = lab.agent(["cleanup", "--mode", mode, *common],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            res.wait(timeout=30)
            if mode != "ebpf":
                again = _cleanup_output(lab, mode, common)
                assert "nothing to clean" in again, again
            print(Path(lab.tmp / "agent.log").read_text()[-3000:])


def _cleanup_output(lab, mode: str, common: list[str]) -> str:
    proc = lab.agent(["cleanup", "--mode", mode, *common], stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=30)
    return out


# --- ClusterIP --------------------------------------------------------------------

def test_cluster_ip_tcp_reaches_exactly_the_ready_backends(env: Env) -> None:
    res = env.node(WEB, 80, count=60)
    assert not res.errors
    assert set(res.counts) == READY
    assert {d["seen_client"] for d in res.details} == {env.seen(False)}


def test_cluster_ip_udp_reaches_exactly_the_ready_backends(env: Env) -> None:
    res = env.node(WEB, 53, proto="udp", count=60)
    assert not res.errors
    assert set(res.counts) == READY


def test_cluster_ip_from_pod_keeps_the_client_address(env: Env) -> None:
    res = env.pod(WEB, 80, count=40)
    assert not res.errors
    assert set(res.counts) == READY
    assert {d["seen_client"] for d in res.details} == {env.seen(True)}


def test_no_endpoints_rejects_quickly(env: Env) -> None:
    res = env.node(EMPTY, 80, count=3, timeout=3)
    assert res.errors == {"ECONNREFUSED": 3}
    assert res.seconds < 1.5


def test_unserved_cluster_ip_port_rejects(env: Env) -> None:
    if env.mode == "ebpf":
        pytest.skip("ebpf: the socket LB leaves unserved ports alone (README, Modes)")
    res = env.node(WEB, 81, count=2, timeout=3)
    assert res.errors == {"ECONNREFUSED": 2}


def test_affinity_keeps_one_client_on_one_backend(env: Env,
                                                  request: pytest.FixtureRequest) -> None:
    if env.mode == "ebpf":
        # Not a deliberate difference: sock_lb.c declares lb_affinity but never uses it.
        request.applymarker(pytest.mark.xfail(
            reason="ebpf: ClientIP affinity not implemented in the socket LB yet", strict=True))
    res = env.node(STICKY, 80, count=30)
    assert not res.errors
    assert len(res.counts) == 1, res.counts


# --- NodePort from a pod ----------------------------------------------------------

def test_node_port_from_pod_is_masqueraded(env: Env) -> None:
    res = env.pod(NODE_IP, NP_WEB, count=40)
    assert not res.errors
    assert set(res.counts) == READY
    assert {d["seen_client"] for d in res.details} == {NODE_IP}


def test_node_port_without_endpoints_rejects(env: Env) -> None:
    res = env.pod(NODE_IP, NP_EMPTY, count=3, timeout=3)
    assert res.errors == {"ECONNREFUSED": 3}
    assert res.seconds < 1.5


def test_local_node_port_short_circuits_pods(env: Env) -> None:
    res = env.pod(NODE_IP, NP_LOCAL, count=40)
    assert not res.errors
    assert set(res.counts) == {"pod0", "pod1"}
    assert {d["seen_client"] for d in res.details} == {env.seen(True)}


def test_node_port_from_node(env: Env) -> None:
    res = env.node(NODE_IP, NP_WEB, count=30)
    assert not res.errors
    assert set(res.counts) == READY


# --- incremental syncs (last: they change the manifests) ---------------------------

def test_changes_are_applied_incrementally(env: Env) -> None:
    objs = manifests()
    for o in objs:
        if o["kind"] == "EndpointSlice" and o["metadata"]["name"] == "web-1":
            for ep in o["endpoints"]:
                ep["conditions"]["ready"] = True  # pod2 becomes ready
        if o["kind"] == "Service" and o["metadata"]["name"] == "empty":
            o["spec"]["ports"][0]["targetPort"] = 8080
    objs.append(slice_("empty", [("10.244.0.12", True, "node-1")], [HTTP]))
    objs = [o for o in objs if o["metadata"]["name"] not in ("sticky", "sticky-1")]
    mdir = env.lab.tmp / "manifests"
    (mdir / "all.yaml").write_text(yaml.safe_dump_all(objs))
    wait_for(lambda: env.node(EMPTY, 80, count=1, timeout=0.5).counts == {"pod2": 1},
             f"{env.mode}: the new endpoint of {EMPTY}")
    res = env.node(WEB, 80, count=90)
    assert set(res.counts) == READY | {"pod2"} and not res.errors
    res = env.node(STICKY, 80, count=2, timeout=0.5)
    assert not res.counts  # the deleted Service is gone
