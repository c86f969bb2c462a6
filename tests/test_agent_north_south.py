"""The agent's north-south extras in the two-node lab: health-check node
ports for externalTrafficPolicy Local, and `pyagent trace --bpf` asking the
loaded TC program."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import bpfmaps
import pytest
import yaml
from agentlab import sync_marker, wait_for_marker

from pyagent.lab.cluster import Cluster

pytestmark = pytest.mark.root

HC_PORT = 32100


def service(name: str, ip: str, **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "d"},
            "spec": {"clusterIP": ip, "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                "nodePort": 30000 + int(ip.rsplit(".", 1)[1])}], **spec}}


def eps(name: str, pods: list) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "d",
                         "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [p.ip4], "nodeName": node} for p, node in pods]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=2) as c:
        yield c


class Agent:
    def __init__(self, c: Cluster) -> None:
        self.c, self.node = c, c.nodes[0]
        self.dir = c.tmp / "agent-ns"
        self.dir.mkdir()
        self.log = c.tmp / "agent-ns.log"
        self.proc = c.agent(0, ["run", "--manifests", str(self.dir), *self.node.agent_args(),
                                "--pod-interface", "br0", "--healthz-bind-address",
                                "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"],
                            stderr=self.log.open("w"))
        self.generation = 0

    def apply(self, *objects: dict) -> None:
        self.generation += 1
        marker = sync_marker(self.generation)
        tmp = self.dir / ".m.tmp"
        tmp.write_text(yaml.safe_dump_all([*objects, marker]))
        tmp.rename(self.dir / "m.yaml")
        wait_for_marker(str(self.node.bpffs), marker, self.proc, self.log)


@pytest.fixture(scope="module")
def agent(cluster: Cluster) -> Iterator[Agent]:
    a = Agent(cluster)
    try:
        yield a
    finally:
        a.proc.terminate()
        a.proc.wait(timeout=20)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs",
                        str(cluster.nodes[0].bpffs)], capture_output=True, check=False)


def health(c: Cluster, ip: str) -> tuple[int, dict]:
    code = ("import json, urllib.request, urllib.error\n"
            f"try:\n r = urllib.request.urlopen('http://{ip}:{HC_PORT}/healthz', timeout=5)\n"
            " print(r.status, r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code, e.read().decode())\n")
    out = c.run([sys.executable, "-c", code]).stdout
    status, _, body = out.partition(" ")
    return int(status), json.loads(body)


def test_health_check_node_port_follows_the_local_endpoints(cluster: Cluster,
                                                            agent: Agent) -> None:
    n0, n1 = cluster.nodes
    svc = service("hc", "10.96.0.7", externalTrafficPolicy="Local",
                  healthCheckNodePort=HC_PORT)
    svc["spec"]["type"] = "LoadBalancer"
    local_and_remote = eps("hc", [(n0.pods[0], n0.name), (n1.pods[0], n1.name)])
    agent.apply(svc, local_and_remote)
    code, body = health(cluster, n0.ip4)
    assert code == 200 and body["localEndpoints"] == 1, body
    assert body["service"] == {"namespace": "d", "name": "hc"}

    agent.apply(svc, eps("hc", [(n1.pods[0], n1.name)]))  # the last local endpoint goes
    code, body = health(cluster, n0.ip4)
    assert code == 503 and body["localEndpoints"] == 0, body

    agent.apply(svc, local_and_remote)  # and comes back
    assert health(cluster, n0.ip4)[0] == 200


def test_trace_bpf_asks_the_loaded_program(cluster: Cluster, agent: Agent) -> None:
    n0, n1 = cluster.nodes
    agent.apply(service("web", "10.96.0.8"),
                eps("web", [(n0.pods[1], n0.name), (n1.pods[1], n1.name)]),
                service("empty", "10.96.0.9"))

    def trace(dport: int) -> dict:
        res = subprocess.run([sys.executable, "-m", "pyagent", "trace", "--bpf", "--bpffs",
                              str(n0.bpffs), "--src", cluster.client_ip4, "--dst", n0.ip4,
                              "--dport", str(dport), "--json"],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    want = {f"{n0.pods[1].ip4}:8080", f"{n1.pods[1].ip4}:8080"}
    seen = set()
    for _ in range(3):  # synthetic flows leave no conntrack behind: same answer each time
        r = trace(30008)
        assert r["verdict"] == "DNAT" and r["masquerade"] is True, r
        seen.add(r["endpoint"])
    assert seen <= want
    assert trace(30009)["verdict"] == "REJECT"
    assert trace(30999)["verdict"] == "NO_MATCH"


def test_maglev_service_gets_a_table_and_serves_every_backend(cluster: Cluster,
                                                              agent: Agent) -> None:
    from pyagent.dataplanes.ebpf import tc

    n0, n1 = cluster.nodes
    svc = service("mag", "10.96.0.11")
    svc["metadata"]["annotations"] = {"pyagent.io/lb-algorithm": "maglev"}
    backends = [(n0.pods[0], n0.name), (n0.pods[1], n0.name), (n1.pods[0], n1.name)]
    agent.apply(svc, eps("mag", backends))
    res = cluster.client(n0.ip4, 30011, count=60, timeout=3)
    assert not res.errors and len(res.counts) == 3, res.counts

    dump = json.loads(subprocess.run(
        [sys.executable, "-m", "pyagent", "maps", "dump", "--bpffs", str(n0.bpffs), "--json"],
        capture_output=True, text=True, check=True).stdout)
    [ext] = [s for s in dump["services"] if s["frontend"]["port"] == 30011
             and s["frontend"]["scope"] == "external"]
    assert ext["algorithm"] == "maglev"
    maps = tc.open_pinned_tc_maps(str(n0.bpffs))
    try:
        table = bpfmaps.read_table(maps, ext["revNatId"])
        ids = {b["backendId"] for b in ext["backends"]}
        assert table is not None and set(table) == ids  # every backend owns entries
        agent.apply(service("mag", "10.96.0.11"), eps("mag", backends))  # annotation gone
        assert bpfmaps.read_table(maps, ext["revNatId"]) is None
    finally:
        maps.close()


def _pyagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyagent", *args], capture_output=True,
                          text=True, check=False, timeout=120)


def _new_connections(bpffs: object, frontend: str) -> dict[str, int]:
    """{backend address:port: new connections} of a frontend, from `services list`."""
    r = _pyagent("services", "list", "--bpffs", str(bpffs), "--json")
    assert r.returncode == 0, r.stderr
    return {e["address"]: e["newConnections"] for row in json.loads(r.stdout)
            if row["frontend"] == frontend for e in row["endpoints"]}


def test_monitor_shows_tc_decisions_and_conntrack_holds_the_flows(cluster: Cluster,
                                                                  agent: Agent) -> None:
    """New flows to a NodePort, as the TC program decides them: the client
    address, the backend that answered each connection, REJECT for a
    Service without endpoints; then the flows in `maps dump --map conntrack`."""
    n0, n1 = cluster.nodes
    agent.apply(service("mon", "10.96.0.12"),
                eps("mon", [(n0.pods[0], n0.name), (n1.pods[0], n1.name)]),
                service("monempty", "10.96.0.13"))
    n = 8
    before = _new_connections(n0.bpffs, f"{n0.ip4}:30012/TCP")
    mon = subprocess.Popen([sys.executable, "-m", "pyagent", "monitor", "--bpffs",
                            str(n0.bpffs), "--json", "--count", str(n + 2),
                            "--service", "d/mon", "--service", "d/monempty"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert mon.stderr is not None and mon.stderr.readline().startswith("listening")
    res = cluster.client(n0.ip4, 30012, count=n, timeout=3)
    assert not res.errors and res.total == n
    cluster.client(n0.ip4, 30013, count=2, timeout=3)
    out, err = mon.communicate(timeout=60)
    assert mon.returncode == 0, err
    evs = [json.loads(line) for line in out.splitlines()]
    by_ip = {p.ip4: p.name for p in cluster.pods}
    tc_new = [e for e in evs if e["frontend"]["port"] == 30012]
    assert [by_ip[e["backend"]["address"]] for e in tc_new] == [d["pod"] for d in res.details]
    for e in tc_new:
        assert (e["origin"], e["verdict"], e["service"]) == ("tc", "translated", "d/mon:http")
        assert e["client"]["address"] == cluster.client_ip4 and e["client"]["port"] > 0
        assert e["frontend"]["address"] == n0.ip4
    assert [(e["verdict"], e["backend"]) for e in evs if e["frontend"]["port"] == 30013] == \
        [("reject", None)] * 2
    # `services list` counts each of those flows for the backend that served it
    after = _new_connections(n0.bpffs, f"{n0.ip4}:30012/TCP")
    served = Counter(f"{e['backend']['address']}:{e['backend']['port']}" for e in tc_new)
    assert {a: after[a] - before.get(a, 0) for a in after if after[a] != before.get(a, 0)} \
        == served

    r = _pyagent("maps", "dump", "--bpffs", str(n0.bpffs), "--map", "conntrack", "--json")
    assert r.returncode == 0, r.stderr
    ct = {m["name"]: m["entries"] for m in json.loads(r.stdout)["maps"]}
    service_entries = [e for e in ct["lb4_ct"] if "SERVICE" in e["value"]["flags"]
                       and e["key"]["dport"] == 30012]
    # the service entry of each monitored flow, DNATed to the backend the event named
    by_port = {e["key"]["sport"]: e for e in service_entries}
    for ev in tc_new:
        e = by_port[ev["client"]["port"]]
        assert e["key"]["saddr"] == cluster.client_ip4 and e["key"]["stage"] == "ingress"
        assert (e["value"]["daddr"], e["value"]["dport"]) == \
            (ev["backend"]["address"], ev["backend"]["port"])
        assert e["value"]["expiresIn"] > 0
    r = _pyagent("maps", "dump", "--bpffs", str(n0.bpffs), "--map", "nonsense")
    assert r.returncode == 1 and "choose from" in r.stderr and "conntrack" in r.stderr


def _flows_to(bpffs: object, node_port: int) -> Counter:
    """TC conntrack service entries of a node port, by the backend they DNAT to."""
    r = _pyagent("maps", "dump", "--bpffs", str(bpffs), "--map", "conntrack", "--json")
    assert r.returncode == 0, r.stderr
    ct = {m["name"]: m["entries"] for m in json.loads(r.stdout)["maps"]}
    return Counter(e["value"]["daddr"] for e in ct["lb4_ct"]
                   if "SERVICE" in e["value"]["flags"] and e["key"]["dport"] == node_port)


def test_a_removed_udp_backend_loses_its_tc_flows_and_the_other_keeps_its(
        cluster: Cluster, agent: Agent) -> None:
    """kube-proxy clears the UDP conntrack of an endpoint that went away: the
    janitor's one pass forgets exactly the removed backend's TC flows."""
    n0, n1 = cluster.nodes
    svc = service("dnsish", "10.96.0.14")
    svc["spec"]["ports"] = [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30014}]

    def slice_(pods: list) -> dict:
        s = eps("dnsish", [(p, n1.name) for p in pods])
        s["ports"] = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
        return s

    agent.apply(svc, slice_(n1.pods[:2]))
    res = cluster.client(n0.ip4, 30014, proto="udp", count=30, timeout=3)
    assert not res.errors and res.total == 30
    a, b = n1.pods[0].ip4, n1.pods[1].ip4
    before = _flows_to(n0.bpffs, 30014)
    assert before[a] > 0 and before[b] > 0  # both served (random over 30 flows)
    agent.apply(svc, slice_(n1.pods[1:2]))
    deadline = time.monotonic() + 20  # the janitor runs after the sync
    while _flows_to(n0.bpffs, 30014)[a] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = _flows_to(n0.bpffs, 30014)
    assert after[a] == 0 and after[b] == before[b]
