"""Faults the hitless-restart test does not cover: SIGKILL in the middle of
a large first sync, UDP (connected and not) and IPv6 under SIGKILL and
endpoint churn, the TC/NodePort path likewise, and every mode under
SIGKILL. After each, every Service serves as its manifests say, nothing
stale is left, and no connection fails or reaches a pod beyond what the
semantics allow."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from agentlab import AgentLab, agent_lab, service, slice_

from pyagent.lab import Lab

pytestmark = pytest.mark.root

SCALE = float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1"))


def probe(name: str, attempted: int, survived: int, lost: int, unit: str = "connections",
          note: str = "") -> None:
    """One line of the issue's table (pytest -s shows it)."""
    print(f"PROBE | {name} | {attempted} | {survived} | {lost} {unit}"
          + (f" | {note}" if note else ""))


# -- SIGKILL during a large first sync -------------------------------------------

def vip(i: int) -> str:
    return f"10.97.{i // 250}.{i % 250 + 1}"


def big_manifests(a: AgentLab, n: int) -> dict[tuple[str, int, str], list[str]]:
    """n one-port Services over the lab's pods; returns the expected frontends."""
    pods = a.lab.pods
    objs, want = [], {}
    for i in range(n):
        backends = [pods[i % len(pods)], pods[(i + 1) % len(pods)]]
        objs.append(service(f"s{i}", [vip(i)], [("http", "TCP", 80)]))
        objs.append(slice_(f"s{i}", f"s{i}", 4, [("http", "TCP", 8080)],
                           [(p.ip4, True) for p in backends]))
        want[(vip(i), 80, "TCP")] = sorted(f"{p.ip4}:8080" for p in backends)
    a.write("big.yaml", *objs)
    return want


class PinnedCounts:
    """Entry counts of the agent's pinned maps, read by the test itself."""

    def __init__(self, bpffs: str) -> None:
        from pyagent.dataplanes.ebpf import layout as L

        self.paths = {n: L.MAPS[n].pin_path(bpffs) for n in ("lb4_services", "lb4_revnat")}
        self.maps: dict = {}

    def _map(self, name: str):
        from ebpf.maps import Map
        from pyagent.dataplanes.ebpf import layout as L

        if name not in self.maps and os.path.exists(self.paths[name]):
            spec = L.MAPS[name]
            self.maps[name] = Map.open_pinned(self.paths[name], spec.key, spec.value)
        return self.maps.get(name)

    def any(self, name: str) -> bool:
        m = self._map(name)
        return m is not None and next(iter(m.keys()), None) is not None

    def count(self, name: str) -> int:
        m = self._map(name)
        return 0 if m is None else sum(1 for _ in m.items_raw())  # (batched reads)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()


def kill_when(a: AgentLab, cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout * SCALE
    while not cond():
        assert a.proc is not None and a.proc.poll() is None, a.logs()[-3000:]
        assert time.monotonic() < deadline, f"never saw {what}:\n{a.logs()[-3000:]}"
        time.sleep(0.001)
    a.stop(signal.SIGKILL)


def ids(a: AgentLab) -> tuple[dict, dict]:
    d = a.dump()
    revs = {(s["frontend"]["address"], s["frontend"]["port"]): s["revNatId"]
            for s in d["services"] if s["frontend"]["scope"] == "internal"}
    return revs, {(b["address"], b["port"]): b["id"] for b in d["backends"]}


def test_sigkill_during_a_large_first_sync_converges() -> None:
    """An agent programmed 2,000 Services; while none runs, 4,000 more are
    added. Each following agent is killed as soon as its (large) first sync
    starts writing, until one was killed with the sync unfinished (a kill
    can land after the last write: then the next agent tries); the last one
    converges: every Service has exactly its backends, no entry is
    missing or left over (ids handed out again while a stray entry of them
    was still to be deleted would show as missing backends or rev-NAT
    entries), the 2,000 keep their service and backend ids, connections
    work."""
    old, n = 2000, 6000
    with agent_lab(3, signal.SIGKILL) as a:
        want_old = big_manifests(a, old)
        pinned = PinnedCounts(a.bpffs)
        try:
            a.start()
            a.wait(lambda f: f == want_old, f"{old} Services", timeout=120)
            kept_revs, kept_backends = ids(a)
            a.stop(signal.SIGKILL)
            want = big_manifests(a, n)
            partial = 0
            for _ in range(6):
                before = (pinned.count("lb4_revnat"), pinned.count("lb4_services"))
                logged = len(a.logs())
                a.start()
                # kill at the first write seen (or once it logs its sync done)
                kill_when(a, lambda b=before, n0=logged: (
                    (pinned.count("lb4_revnat"), pinned.count("lb4_services")) != b
                    or "full sync of" in a.logs()[n0:]), "the first sync writing")
                partial += len(a.dump()["services"]) < n
                if partial:
                    break
            assert partial, "no kill landed before the sync was done"
            a.start()
            a.wait(lambda f: f == want, f"{n} Services with their backends", timeout=180)
            d = a.dump()
            entries = {name: m.get("entries") for name, m in d["maps"].items()}
            assert entries["lb4_services"] == sum(1 + len(b) for b in want.values())
            assert entries["lb4_revnat"] == n and entries["lb4_backends"] == 3
            assert all(b["state"] == "active" for s in d["services"] for b in s["backends"])
            revs, backends = ids(a)
            assert {k: revs[k] for k in kept_revs} == kept_revs  # ids kept
            assert backends == kept_backends
            probe("SIGKILL mid large first sync", n, n, 0, "Services",
                  f"{old} kept their ids; entries exactly as desired")
            for i in range(0, n, n // 40):
                res = a.lab.client(vip(i), 80, count=4)
                assert not res.errors, (vip(i), res.errors)
                assert {f"{a.lab.pods[j].ip4}:8080" for j in res_pods(a, res)} <= set(
                    want[(vip(i), 80, "TCP")])
        finally:
            pinned.close()


def res_pods(a: AgentLab, res) -> list[int]:
    return [int(name.removeprefix("pod")) for name in res.counts]


# -- UDP and IPv6 on the socket path: SIGKILL and endpoint churn -------------------

VIP4, VIP6 = "10.96.0.10", "fd00:96::10"
PORTS = [("http", "TCP", 80), ("dns", "UDP", 53)]
TARGETS = [("http", "TCP", 8080), ("dns", "UDP", 5353)]


def write_echo(a: AgentLab, pods: list[int]) -> None:
    p = a.lab.pods
    a.write("svc.yaml", service("echo", [VIP4, VIP6], PORTS))
    a.write("eps.yaml", slice_("echo", "v4", 4, TARGETS, [(p[i].ip4, True) for i in pods]),
            slice_("echo", "v6", 6, TARGETS, [(p[i].ip6, True) for i in pods]))


def follower(lab: Lab, dst: str, until: Path) -> subprocess.Popen:
    return lab.client_start(dst, 53, proto="udp", follow=600, until=until, timeout=3)


def check_follower(res, sets: list[set[str]]) -> None:
    """A connected UDP client through churn: it may see its socket destroyed
    (once per removal of its backend) and then reconnects; it never times
    out and always talks to a pod that is a backend at some point."""
    allowed = set().union(*sets)
    assert set(res.counts) <= allowed, res.counts
    errors = [i for i, e in enumerate(res.details) if "error" in e]
    context = [res.details[max(0, i - 2):i + 2] for i in errors]
    assert set(res.errors) <= {"ECONNABORTED", "EDESTADDRREQ"}, (res.errors, context)
    assert "ETIMEDOUT" not in res.errors


def test_udp_and_ipv6_under_sigkill_and_endpoint_churn() -> None:
    """TCP and UDP (connected and not), IPv4 and IPv6 clients run while the
    agent is SIGKILLed (endpoints change while it is away) and then while
    endpoints churn: backends are added, removed and replaced. No TCP
    connection or unconnected UDP exchange fails; connected UDP sockets are
    destroyed only when their backend leaves; pod5, never a backend, never
    answers."""
    with agent_lab(6, signal.SIGKILL) as a:
        lab = a.lab
        write_echo(a, [0, 1])
        a.start()
        a.wait(lambda f: len(f.get((VIP6, 53, "UDP"), ())) == 2, "2 backends", timeout=120)
        stop = lab.tmp / "stop"  # the clients run until it exists
        clients = {
            f"tcp{v}": lab.client_start(vip_, 80, count=10_000_000, duration=600, until=stop,
                                        hold=5, timeout=3)
            for v, vip_ in ((4, VIP4), (6, VIP6))}
        clients |= {f"udp{v}": lab.client_start(vip_, 53, proto="udp", count=10_000_000,
                                                duration=600, until=stop, timeout=3)
                    for v, vip_ in ((4, VIP4), (6, VIP6))}
        followers = {f"follow{v}-{k}": follower(lab, vip_, stop)
                     for v, vip_ in ((4, VIP4), (6, VIP6)) for k in range(3)}
        sets = [{0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4}, {0, 3, 4}]
        time.sleep(2)
        a.stop(signal.SIGKILL)
        write_echo(a, sorted(sets[1]))  # a change while no agent runs
        time.sleep(1)
        a.start()
        a.wait(lambda f: len(f.get((VIP6, 80, "TCP"), ())) == 3, "3 backends after restart",
               timeout=120)
        for pods in sets[2:]:
            time.sleep(2)
            write_echo(a, sorted(pods))
            want = sorted(f"{lab.pods[i].ip4}:5353" for i in pods)
            a.wait(lambda f, w=want: f.get((VIP4, 53, "UDP")) == w, f"backends {pods}")
        time.sleep(1)
        assert all(c.poll() is None for c in clients.values()), "clients ended too early"
        stop.touch()
        names = [{f"pod{i}" for i in s} for s in sets]
        for what, c in clients.items():
            r = lab.client_result(c, timeout=90)
            probe(f"socket LB {what}, SIGKILL + 5 endpoint changes", r.total + sum(
                r.errors.values()), r.total, sum(r.errors.values()))
            assert r.errors == {}, (what, r.errors)
            assert r.total > 50, (what, r.total)
            assert set(r.counts) <= set().union(*names), (what, r.counts)
        for what, c in followers.items():
            r = lab.client_result(c, timeout=90)
            probe(f"socket LB {what} (connected UDP)", r.total + sum(r.errors.values()),
                  r.total, sum(r.errors.values()), "queries",
                  "lost = socket destroyed as its backend left (allowed), then reconnected")
            check_follower(r, names)
            assert r.total > 100, (what, r.total)
        # now exactly the last set, and nothing left of the others
        last = {f"pod{i}" for i in sets[-1]}
        for v in (VIP4, VIP6):
            assert set(lab.client(v, 80, count=60).counts) == last
            assert set(lab.client(v, 53, proto="udp", count=60).counts) == last


# -- the TC / NodePort path: SIGKILL and endpoint churn ----------------------------

NP_TCP, NP_UDP = 30080, 30053


def np_objects(pods, names: list[int]) -> list[dict]:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "d"},
           "spec": {"type": "NodePort", "clusterIP": "10.96.1.1", "clusterIPs": ["10.96.1.1"],
                    "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                               "targetPort": 8080, "nodePort": NP_TCP},
                              {"name": "dns", "protocol": "UDP", "port": 53,
                               "targetPort": 5353, "nodePort": NP_UDP}]}}
    svc["spec"]["clusterIPs"].append("fd00:96::1:1")
    out = [svc]
    for fam in (4, 6):
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "addressType": f"IPv{fam}",
                    "metadata": {"name": f"np-{fam}", "namespace": "d",
                                 "labels": {"kubernetes.io/service-name": "np"}},
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                              {"name": "dns", "port": 5353, "protocol": "UDP"}],
                    "endpoints": [{"addresses": [pods[i].ip4 if fam == 4 else pods[i].ip6],
                                   "nodeName": node, "conditions": {"ready": True}}
                                  for i, node in names]})
    return out


def test_nodeport_tc_path_under_sigkill_and_endpoint_churn() -> None:
    """External clients reach a NodePort (TCP and UDP, IPv4 and IPv6)
    through the TC programs while the agent is SIGKILLed and restarted and
    endpoints churn across both nodes: no TCP connection (new or held) or
    UDP exchange fails, and only pods that are backends at some point
    answer."""
    from agentlab import sync_marker, wait_for_marker

    from pyagent.lab.cluster import Cluster

    with Cluster(nodes=2, pods_per_node=3) as c:
        node = c.nodes[0]
        pods = c.pods  # node0: 0-2, node1: 3-5
        nodes = {i: c.node_of(p).name for i, p in enumerate(pods)}
        mdir = c.tmp / "np"
        mdir.mkdir()
        log = c.tmp / "agent.log"
        generation = [0]

        def write(members: list[int]) -> dict:
            generation[0] += 1
            marker = sync_marker(generation[0])
            tmp = mdir / ".m.tmp"
            tmp.write_text(yaml.safe_dump_all(
                [*np_objects(pods, [(i, nodes[i]) for i in members]), marker]))
            tmp.rename(mdir / "m.yaml")
            return marker

        def start() -> subprocess.Popen:
            return c.agent(0, ["run", "--manifests", str(mdir), *node.agent_args(),
                               "--pod-interface", "br0", "--healthz-bind-address",
                               "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"],
                           stderr=log.open("a"))

        # pods 0 and 3 stay: connections held to them must survive (the TC
        # path re-balances a flow whose backend left the Service)
        sets = [[0, 3], [0, 1, 3], [0, 3, 4], [0, 2, 3], [0, 3, 5]]
        marker = write(sets[0])
        proc = start()
        try:
            wait_for_marker(str(node.bpffs), marker, proc, log, timeout=120)
            stop = c.tmp / "stop"  # the clients run until it exists
            common = ["--count", "10000000", "--duration", "600", "--until", str(stop),
                      "--timeout", "3"]
            # Paced, as in test_modes: at full speed (~500 new flows/s) one new
            # TCP connection in ~10,000 times out even without faults (client
            # port reuse against conntrack entries of closed flows), and a new
            # UDP socket per query would exhaust the masquerade ports (each
            # flow holds one for the 60 s UDP timeout); neither is what this
            # test is about. UDP: 20 queries per socket.
            clients = {
                f"{proto}{v}": c.popen(
                    [sys.executable, "-m", "pyagent.lab.client", "--dst", ip, "--port",
                     str(port), "--proto", proto, *common, "--pause", "0.005",
                     *(["--hold", "4"] if proto == "tcp" else ["--messages", "20"])],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for v, ip in ((4, node.ip4), (6, node.ip6))
                for proto, port in (("tcp", NP_TCP), ("udp", NP_UDP))}
            time.sleep(2)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            marker = write(sets[1])  # changed while no agent runs
            time.sleep(1)
            proc = start()
            wait_for_marker(str(node.bpffs), marker, proc, log, timeout=90)
            for members in sets[2:]:
                time.sleep(2.5)
                marker = write(members)
                wait_for_marker(str(node.bpffs), marker, proc, log)
            time.sleep(1)
            assert all(cl.poll() is None for cl in clients.values()), "clients ended too early"
            stop.touch()
            allowed = {pods[i].name for s in sets for i in s}
            for what, cl in clients.items():
                out, err = cl.communicate(timeout=90)
                assert cl.returncode == 0, err
                r = json.loads(out)
                total, lost = sum(r["counts"].values()), sum(r["errors"].values())
                probe(f"NodePort (TC) {what}, SIGKILL + 3 endpoint changes", total + lost,
                      total, lost, "exchanges" if what.startswith("udp") else "connections")
                assert r["errors"] == {}, (what, r["errors"])
                assert sum(r["counts"].values()) > 50, (what, r["counts"])
                assert set(r["counts"]) <= allowed, (what, r["counts"])
            last = {pods[i].name for i in sets[-1]}
            for ip in (node.ip4, node.ip6):
                assert set(c.client(ip, NP_TCP, count=80).counts) == last
                assert set(c.client(ip, NP_UDP, proto="udp", count=80).counts) == last
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            proc.wait(timeout=20)
            subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs",
                            str(node.bpffs), "--cgroup", str(node.cgroup),
                            "--interface", "eth0", "--interface", "br0"],
                           capture_output=True, check=False)


# -- every mode under SIGKILL --------------------------------------------------------

def _ipvs_available() -> bool:
    if Path("/proc/net/ip_vs").exists():
        return True
    return subprocess.run(["modprobe", "-n", "ip_vs"], capture_output=True,
                          check=False).returncode == 0


MODES = ("ebpf", "iptables", "nftables", "userspace",
         *([pytest.param("ipvs", marks=pytest.mark.vm)] if _ipvs_available() else []))
NODE_IP = "10.244.0.1"
KEEP, GONE, EMPTIED = "10.96.0.11", "10.96.0.12", "10.96.0.13"


def mode_manifests(gone: bool, keep_pods: list[str]) -> list[dict]:
    def svc(name: str, ip: str) -> dict:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "t"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                         "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                    "targetPort": 8080}]}}

    def eps(name: str, ips: list[str]) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "addressType": "IPv4", "metadata": {"name": name, "namespace": "t", "labels": {
                    "kubernetes.io/service-name": name}},
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                               "nodeName": "node-1"} for ip in ips]}

    out = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
           svc("keep", KEEP), eps("keep", keep_pods), svc("emptied", EMPTIED),
           eps("emptied", [] if gone else ["10.244.0.10"])]
    if not gone:
        out += [svc("gone", GONE), eps("gone", ["10.244.0.10", "10.244.0.11"])]
    return out


def kernel_text(lab: Lab) -> str:
    """Every rule and object a packet mode could have left, as text."""
    parts = [lab.node_exec("iptables-save", check=False).stdout,
             lab.node_exec("ip6tables-save", check=False).stdout,
             lab.node_exec("nft", "list", "ruleset", check=False).stdout,
             lab.node_exec("ip", "addr", check=False).stdout,
             lab.node_exec("ip", "route", "show", "table", "all", check=False).stdout]
    if Path("/proc/net/ip_vs").exists():
        parts.append(lab.node_exec("cat", "/proc/net/ip_vs", check=False).stdout)
    return "\n".join(parts)


def ipvs_hex(ip: str) -> str:
    return "".join(f"{int(o):02X}" for o in ip.split("."))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_serves_again_after_sigkill_with_nothing_stale(mode: str) -> None:
    """SIGKILL the agent; while it is away one Service is deleted, one loses
    its endpoints and one changes them. The restarted agent serves each as
    its manifests now say, and nothing of the deleted Service is left in
    the kernel."""
    with Lab(pods=3) as lab:
        lab.add_routed_pod("client", "10.244.1.2")
        lab.enable_routing()
        mdir = lab.tmp / "manifests"
        mdir.mkdir()
        (mdir / "all.yaml").write_text(yaml.safe_dump_all(
            mode_manifests(False, ["10.244.0.10", "10.244.0.11"])))
        bpffs = str(lab.bpffs / "pyagent")
        common = ["--cgroup", str(lab.cgroup), "--bpffs", bpffs]
        log = (lab.tmp / "agent.log").open("a")

        def start() -> subprocess.Popen:
            return lab.agent(["run", "--manifests", str(mdir), "--node-name", "node-1",
                              "--node-ip", NODE_IP, "--cluster-cidr", "10.244.0.0/16",
                              "--mode", mode, *common, "--healthz-bind-address",
                              "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"],
                             stdout=log, stderr=subprocess.STDOUT)

        def serves(ip: str, want: set[str], timeout: float = 45) -> None:
            deadline = time.monotonic() + timeout * SCALE
            while True:
                res = lab.client(ip, 80, count=40, timeout=0.5)
                if set(res.counts) == want and (not want or not res.errors):
                    return
                assert time.monotonic() < deadline, (mode, ip, res.counts, res.errors,
                                                     (lab.tmp / "agent.log").read_text()[-3000:])
                time.sleep(0.3)

        agent = start()
        try:
            serves(KEEP, {"pod0", "pod1"})
            serves(GONE, {"pod0", "pod1"})
            assert GONE in kernel_text(lab) or ipvs_hex(GONE) in kernel_text(lab) or \
                mode == "ebpf"
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=10)
            (mdir / "all.yaml").write_text(yaml.safe_dump_all(
                mode_manifests(True, ["10.244.0.11", "10.244.0.12"])))
            agent = start()
            serves(KEEP, {"pod1", "pod2"})
            res = lab.client(EMPTIED, 80, count=3, timeout=2)
            assert res.total == 0 and res.errors == {"ECONNREFUSED": 3}, res.errors
            serves(GONE, set())  # no longer served...
            text = kernel_text(lab)
            assert GONE not in text and ipvs_hex(GONE) not in text, \
                f"{mode}: the deleted Service is still in the kernel"  # ...and nothing left
            if mode == "ebpf":
                from pyagent.dataplanes.ebpf.dump import dump

                assert not any(s["frontend"]["address"] == GONE for s in dump(bpffs)["services"])
            probe(f"mode {mode}: SIGKILL, 1 Service deleted / 1 emptied / 1 changed meanwhile",
                  3, 3, 0, "Services", "served as the manifests say, nothing stale left")
        finally:
            agent.terminate()
            agent.wait(timeout=20)
            log.close()
            lab.agent(["cleanup", "--mode", mode, *common], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).wait(timeout=60)

