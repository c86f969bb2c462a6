"""kube-proxy's packet-flow vectors for traffic from outside the cluster to
NodePorts, externalIPs, LoadBalancer IPs and ClusterIPs, replayed with real
TCP connections through `pyagent run` (TC path) in a two-node lab.

Each vector scenario is moved onto lab addresses: the vector's node becomes
node0 (where the agent runs), its endpoints become pods on node0 (local) or
node1 (remote), externalIPs and LB IPs come from the lab's VIP range and
ClusterIPs from the lab's service range (both routed to node0 by the
client, as an upstream router would), and the external clients
203.0.113.0/24 / 2600:5200::/32 become addresses of the lab's client
namespace in 192.168.52.0/24 / fd00:52::/64, so that source ranges keep
their meaning. node1 routes those client addresses via node0: a flow kube-
proxy does not masquerade (external to a ClusterIP without a local-traffic
detector) reaches a remote backend with the client's address, and its reply
must return through the node that translated it, as with kube-proxy. Then,
per flow: a DNAT reaches exactly the expected backends (over enough
connections, all of them) and the backend sees the client's address exactly
when the vector says no masquerade; REJECT is refused at once, DROP times out.

Flows not expressible here are left out (listed in `skip_reason`): traffic
from pods or the node itself (socket path, tested elsewhere), destinations
that are other local addresses of the vector's node, and SCTP.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from agentlab import sync_marker, wait_for_marker
from unit.conformance_adapter import SHARED, effective, load, scenario_config, scenario_objects

from pyagent.core.parse import parse_cidr, parse_ip
from pyagent.lab.cluster import Cluster

# A per-test skip, not a module-level one: conftest turns a skipped `root`
# test into a failure under PYAGENT_REQUIRE_KERNEL=1, a skipped module it
# never sees.
pytestmark = [pytest.mark.root, pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"conformance vectors not found at {SHARED}")]

FLOWS = load("packet_flows.json") if SHARED.is_dir() else {}
DEFAULTS = FLOWS.get("backend_defaults") or {}
SCENARIOS = FLOWS.get("scenarios", []) + FLOWS.get("derived_scenarios", [])
EXTERNAL = {4: ipaddress.ip_network("203.0.113.0/24"), 6: ipaddress.ip_network("2600:5200::/32")}
LAB_EXTERNAL = {4: ipaddress.ip_network("192.168.52.0/24"), 6: ipaddress.ip_network("fd00:52::/64")}
VIPS = {4: "198.51.100.", 6: "fd00:99::"}
# The lab's service CIDRs: the vectors' ClusterIPs are moved here.
LAB_SERVICES = {4: ipaddress.ip_network("10.96.0.0/16"), 6: ipaddress.ip_network("fd00:96::/112")}


def cluster_ips(scn: dict) -> set[str]:
    return {str(parse_ip(ip)) for s in scn["services"]
            for ip in [s.get("clusterIP"), *(s.get("clusterIPs") or [])]
            if ip and parse_ip(ip) is not None}


def is_external(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return a in EXTERNAL[a.version]


def to_lab_client(ip: str) -> str:
    a = ipaddress.ip_address(ip)
    offset = int(a) - int(EXTERNAL[a.version].network_address)
    return str(LAB_EXTERNAL[a.version].network_address + offset)


def skip_reason(scn: dict, flow: dict) -> str | None:
    eff = effective(scn, DEFAULTS)
    if flow["protocol"] not in ("TCP", "UDP"):
        return "protocol"
    if not is_external(flow["source_ip"]):
        return "not from outside the cluster"
    dst = str(parse_ip(flow["dest_ip"]))
    ext = {str(parse_ip(ip)) for s in scn["services"]
           for ip in (s.get("externalIPs") or [])
           + [i["ip"] for i in (s.get("loadBalancerIngress") or [])]}
    if dst in ext or dst in cluster_ips(scn):
        return None
    if dst in (eff.get("nodeIP"), "192.168.0.2", "2001:db8::1"):
        return None  # NodePort on the node's primary address
    return "another local address of the node"


def selected() -> list[dict]:
    out = []
    for scn in SCENARIOS:
        flows = [f for f in scn["flows"] if skip_reason(scn, f) is None]
        if flows:
            out.append({**scn, "flows": flows})
    return out


class Mapper:
    """Vector address -> lab address, for one scenario."""

    def __init__(self, cluster: Cluster, scn: dict) -> None:
        eff = effective(scn, DEFAULTS)
        self.node_name = eff.get("nodeName", "test-node")
        n0 = cluster.nodes[0]
        self.ips: dict[str, str] = {"192.168.0.2": n0.ip4, "2001:db8::1": n0.ip6}
        if eff.get("nodeIP"):
            self.ips[str(parse_ip(eff["nodeIP"]))] = n0.ip6 if ":" in eff["nodeIP"] else n0.ip4
        local_pods = iter(cluster.nodes[0].pods)
        remote_pods = iter(cluster.nodes[1].pods)
        self.pod_of: dict[str, str] = {}
        for es in scn["endpoint_slices"]:
            for ep in es["endpoints"]:
                ip = str(parse_ip(ep["addresses"][0]))
                if ip in self.ips:
                    continue
                pod = next(local_pods if ep.get("nodeName") == self.node_name else remote_pods)
                self.ips[ip] = pod.ip6 if ":" in ip else pod.ip4
                self.pod_of[ip] = pod.name
        for i, ip in enumerate(sorted(cluster_ips(scn))):
            fam = 6 if ":" in ip else 4
            self.ips[ip] = str(LAB_SERVICES[fam].network_address + 10 + i)
        k = {4: 10, 6: 10}
        for svc in scn["services"]:
            for raw in (svc.get("externalIPs") or []) + [
                    i["ip"] for i in (svc.get("loadBalancerIngress") or [])]:
                ip = str(parse_ip(raw))
                if ip not in self.ips:
                    fam = 6 if ":" in ip else 4
                    self.ips[ip] = f"{VIPS[fam]}{k[fam] if fam == 4 else format(k[fam], 'x')}"
                    k[fam] += 1
        self.node0 = n0

    def ip(self, ip: str) -> str:
        norm = str(parse_ip(ip))
        if is_external(norm):
            return to_lab_client(norm)
        return self.ips.get(norm, norm)

    def cidr(self, cidr: str) -> str | None:
        net = parse_cidr(cidr.strip())
        if net.network_address in EXTERNAL[net.version] and net.prefixlen >= 24:
            return f"{to_lab_client(str(net.network_address))}/{net.prefixlen}"
        node = ipaddress.ip_address(self.node0.ip4 if net.version == 4 else self.node0.ip6)
        vec_node = ipaddress.ip_address("192.168.0.2" if net.version == 4 else "2001:db8::1")
        if vec_node in net:
            return str(ipaddress.ip_network(f"{node}/{net.prefixlen}", strict=False))
        return None

    def rewrite(self, obj: Any, key: str = "") -> Any:
        if isinstance(obj, dict):
            return {k: self.rewrite(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            if key == "loadBalancerSourceRanges":
                return [c for c in (self.cidr(x) for x in obj) if c]
            return [self.rewrite(x, key) for x in obj]
        if isinstance(obj, str):
            if obj == self.node_name:
                return self.node0.name
            return self.ip(obj) if parse_ip(obj) is not None else obj
        return obj

    def config(self, scn: dict) -> dict:
        cfg = scenario_config(scn, DEFAULTS)
        npa = [c for c in (self.cidr(x) for x in cfg.get("nodePortAddresses") or []) if c]
        out = {"hostnameOverride": self.node0.name, "minSyncPeriod": "100ms",
               "masqueradeAll": cfg.get("masqueradeAll", False),
               "nodePortAddresses": npa or [f"{self.node0.ip4}/32", f"{self.node0.ip6}/128"]}
        if (cfg.get("localDetector") or {}).get("mode") != "none":
            out["clusterCIDR"] = "10.244.0.0/16,fd00:244::/48"
        return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=4, tcp_ports=(80, 8443, 5353), udp_ports=(53,)) as c:
        for net in LAB_EXTERNAL.values():
            for host in (2, 130, 1):
                addr = net.network_address + host
                c.run(["ip", "addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0", "nodad"],
                      ns=c.client_ns)
        n0 = c.nodes[0]
        for node in c.nodes:  # node1: back through node0, which translated the flow
            via4, via6 = (c.client_ip4, c.client_ip6) if node is n0 else (n0.ip4, n0.ip6)
            c.node_exec(node.index, "ip", "route", "add", str(LAB_EXTERNAL[4]), "via", via4)
            c.node_exec(node.index, "ip", "-6", "route", "add", str(LAB_EXTERNAL[6]), "via",
                        via6)
        c.route_vips(0, [str(n) for n in LAB_SERVICES.values()])
        yield c


class Agent:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.node = cluster.nodes[0]
        self.dir = cluster.tmp / "ns-manifests"
        self.dir.mkdir(exist_ok=True)
        self.cfg = cluster.tmp / "ns-config.yaml"
        self.proc: subprocess.Popen | None = None
        self.config: dict | None = None
        self.log = cluster.tmp / "ns-agent.log"
        self.generation = 0

    def ensure(self, config: dict) -> None:
        if config == self.config and self.proc and self.proc.poll() is None:
            return
        self.stop()
        self.cfg.write_text(yaml.safe_dump(config))
        # The pod CIDRs (the local-traffic detector) come from the config
        # file alone: --cluster-cidr would override a scenario without one.
        args = self.node.agent_args()
        while "--cluster-cidr" in args:
            i = args.index("--cluster-cidr")
            del args[i:i + 2]
        self.proc = self.c.agent(0, ["run", "--manifests", str(self.dir), "--config",
                                     str(self.cfg), *args, "--pod-interface",
                                     "br0", "--healthz-bind-address", "127.0.0.1:0",
                                     "--metrics-bind-address", "127.0.0.1:0"],
                                 stderr=self.log.open("a"))
        self.config = config

    def apply(self, objects: list[dict]) -> None:
        """Write the scenario and wait until the agent has programmed it: a
        marker Service unique to this write shows up among its frontends."""
        self.generation += 1
        marker = sync_marker(self.generation)
        tmp = self.dir / ".all.tmp"
        tmp.write_text(yaml.safe_dump_all([*objects, marker]))
        tmp.rename(self.dir / "all.yaml")
        wait_for_marker(str(self.node.bpffs), marker, self.proc, self.log)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture(scope="module")
def agent(cluster: Cluster) -> Iterator[Agent]:
    a = Agent(cluster)
    try:
        yield a
    finally:
        a.stop()
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs",
                        str(cluster.nodes[0].bpffs)], capture_output=True, check=False)


def run_flow(cluster: Cluster, m: Mapper, flow: dict) -> None:
    src, dst = m.ip(flow["source_ip"]), m.ip(flow["dest_ip"])
    proto = flow["protocol"].lower()
    verdict = flow["expected_verdict"]
    want = {m.pod_of[str(parse_ip(e.rsplit(":", 1)[0].strip("[]")))]
            for e in flow.get("expected_endpoints") or []}
    udp = {"connected": True} if proto == "udp" else {}
    if verdict == "DNAT":
        res = cluster.client(dst, flow["dest_port"], proto, count=12 * len(want),
                             timeout=3, source=src, **udp)
        assert not res.errors, res.errors
        assert set(res.counts) == want, (res.counts, want)
        seen = {d.get("seen_client") for d in res.details}
        if flow["expected_masquerade"]:
            assert src not in seen, seen
        else:
            assert seen == {src}, seen
    elif verdict == "REJECT":
        res = cluster.client(dst, flow["dest_port"], proto, count=3, timeout=3, source=src,
                             **udp)
        assert res.errors == {"ECONNREFUSED": 3}, res.errors
    elif verdict == "DROP":
        res = cluster.client(dst, flow["dest_port"], proto, count=2, timeout=1, source=src,
                             **udp)
        assert res.errors == {"ETIMEDOUT": 2}, res.errors
    else:  # NO_MATCH: not balanced to any pod
        res = cluster.client(dst, flow["dest_port"], proto, count=2, timeout=1, source=src,
                             **udp)
        assert not res.counts, res.counts


def scenario_id(scn: dict) -> str:
    return scn["id"]


@pytest.mark.parametrize("scn", sorted(selected(), key=lambda s: json.dumps(
    scenario_config(s, DEFAULTS), sort_keys=True)), ids=scenario_id)
def test_external_flows(scn: dict, cluster: Cluster, agent: Agent) -> None:
    m = Mapper(cluster, scn)
    agent.ensure(m.config(scn))
    agent.apply([m.rewrite(o) for o in scenario_objects(scn)])
    failures = []
    for flow in scn["flows"]:
        try:
            run_flow(cluster, m, flow)
        except AssertionError as exc:
            failures.append(f"{flow['name']} ({flow['expected_verdict']}): {exc}")
    assert not failures, "\n".join(failures)


def test_selection_covers_every_kind_of_external_flow() -> None:
    flows = [f for s in selected() for f in s["flows"]]
    verdicts = {f["expected_verdict"] for f in flows}
    assert {"DNAT", "REJECT", "DROP"} <= verdicts
    assert len(flows) >= 30
    to_cluster_ips = [(f["expected_masquerade"], f["expected_endpoints"]) for s in selected()
                      for f in s["flows"] if str(parse_ip(f["dest_ip"])) in cluster_ips(s)]
    assert {masq for masq, _ in to_cluster_ips} == {True, False}
