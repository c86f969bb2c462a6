"""North-south traffic through the TC load balancer in a two-node lab.

A Cluster (pyagent/lab/cluster.py) gives two node namespaces on a fabric
bridge, two pods per node with identity servers, and an external client.
Each node gets the TC programs on its uplink and pod links, its own pinned
maps and node config; the tests write frontends straight into the maps
(the agent-driven path is tested elsewhere) and send real TCP and UDP from
the client, checking which pods answer and which source address they saw.
"""

from __future__ import annotations

import ctypes
import itertools
import subprocess
import sys

import bpfmaps
import pytest

from pyagent.dataplanes.ebpf import layout as L
from pyagent.lab.cluster import POD_BRIDGE

pytestmark = pytest.mark.root

F = L.ServiceFlag
TCP_PORT, UDP_PORT = 8080, 5353  # the pods' identity servers
_ids = itertools.count(1)
_ports = itertools.count(30100)


@pytest.fixture(scope="module")
def cluster():
    from pyagent.dataplanes.ebpf import socket_lb, tc
    from pyagent.lab.cluster import Cluster

    Cluster.sweep()  # what a crashed run left, including its processes
    caps = socket_lb.Capacities(1024, 1024, 1024, 64, 256, 1024)
    with Cluster(nodes=2, pods_per_node=2) as c:
        c.lbs = []
        # node0 hooks every pod veth; node1 only its pod bridge, which sees
        # the same routed pod traffic (both ways of attaching are tested).
        c.pod_hooks = [c.nodes[0].pod_links, [POD_BRIDGE]]
        try:
            for node, pods in zip(c.nodes, c.pod_hooks, strict=True):
                c.lbs.append(tc.setup(str(node.bpffs), [node.uplink], pods, node.ns,
                                      node.ip4, node.ip6, caps,
                                      tc.TcCapacities(ct=8192, src_range=64)))
            yield c
        finally:
            for lb in c.lbs:
                lb.close()
            for node, pods in zip(c.nodes, c.pod_hooks, strict=True):
                tc.cleanup(str(node.bpffs), [node.uplink, *pods], node.ns)
                socket_lb.cleanup(str(node.bpffs))


def put_frontend(cluster, node_index: int, vip: str, port: int, proto: str,
                 pods: list, target: int, flags: int, local: list | None = None) -> int:
    """One EXTERNAL-scope frontend on a node: backends, slots, master.
    Backends in `local` (default: the node's pods) are marked local."""
    node = cluster.nodes[node_index]
    maps = cluster.lbs[node_index].lb_maps
    v6 = ":" in vip
    rev = next(_ids)
    bmap = maps.lb6_backends if v6 else maps.lb4_backends
    smap = maps.lb6_services if v6 else maps.lb4_services
    for slot, pod in enumerate(pods, 1):
        bid = next(_ids)
        is_local = any(pod is p for p in (node.pods if local is None else local))
        bmap.set(ctypes.c_uint32(bid), L.backend_value(
            pod.ip6 if v6 else pod.ip4, target, proto,
            flags=L.BACKEND_F_LOCAL if is_local else 0))
        smap.set(L.service_key(vip, port, proto, slot=slot, scope=L.SCOPE_EXTERNAL),
                 L.LbService(backend_id=bid))
    smap.set(L.service_key(vip, port, proto, scope=L.SCOPE_EXTERNAL),
             L.LbService(count=len(pods), rev_nat_id=rev, flags=flags))
    return rev


def addr(obj, v6: bool) -> str:
    return obj.ip6 if v6 else obj.ip4


def client_ip(cluster, v6: bool) -> str:
    return cluster.client_ip6 if v6 else cluster.client_ip4


# One ICMP echo over a raw socket (no ping binary needed); exit 0 on a reply.
PING = r"""
import socket, struct, sys
from pyagent.dataplanes.ebpf.packet import checksum
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"pyagent!"
body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
s.sendto(body, (sys.argv[1], 0))
while True:
    data, _ = s.recvfrom(2048)
    if data[20] == 0 and data[24:26] == bytes([0x12, 0x34]):
        sys.exit(0)
"""


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_nodeport_cluster_policy_masquerades_and_reaches_every_pod(cluster, v6):
    node0 = cluster.nodes[0]
    vip = addr(node0, v6)
    tport, uport = next(_ports), next(_ports)
    pods = cluster.pods  # two on node0, two on node1
    put_frontend(cluster, 0, vip, tport, "TCP", pods, TCP_PORT, F.NODE_PORT | F.MASQUERADE)
    put_frontend(cluster, 0, vip, uport, "UDP", pods, UDP_PORT, F.NODE_PORT | F.MASQUERADE)

    t = cluster.client(vip, tport, "tcp", count=120)
    assert t.errors == {} and t.total == 120
    assert set(t.counts) == {p.name for p in pods}
    # Masqueraded: every backend saw the node, never the client.
    assert {d["seen_client"] for d in t.details} == {vip}
    assert {d["peer"] for d in t.details} == {vip}

    u = cluster.client(vip, uport, "udp", count=60, messages=2)
    assert u.errors == {} and set(u.counts) == {p.name for p in pods}
    for d in u.details:
        assert len(set(d["pods"])) == 1  # one flow, one backend
        assert set(d["from"]) == {vip}  # replies come from the frontend
        assert d["seen_client"] == vip


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_nodeport_local_policy_preserves_the_client_ip(cluster, v6):
    node1 = cluster.nodes[1]
    vip = addr(node1, v6)
    tport, uport = next(_ports), next(_ports)
    put_frontend(cluster, 1, vip, tport, "TCP", node1.pods, TCP_PORT,
                 F.NODE_PORT | F.LOCAL_ETP)
    put_frontend(cluster, 1, vip, uport, "UDP", node1.pods, UDP_PORT,
                 F.NODE_PORT | F.LOCAL_ETP)

    t = cluster.client(vip, tport, "tcp", count=60)
    assert t.errors == {} and set(t.counts) == {p.name for p in node1.pods}
    assert {d["seen_client"] for d in t.details} == {client_ip(cluster, v6)}

    u = cluster.client(vip, uport, "udp", count=30)
    assert u.errors == {} and set(u.counts) == {p.name for p in node1.pods}
    assert {d["seen_client"] for d in u.details} == {client_ip(cluster, v6)}
    assert {f for d in u.details for f in d["from"]} == {vip}


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_no_local_endpoint_drops_and_no_endpoint_rejects(cluster, v6):
    vip = addr(cluster.nodes[0], v6)
    drop_t, drop_u, rej_t, rej_u = (next(_ports) for _ in range(4))
    drop = F.NODE_PORT | F.LOCAL_ETP | F.DROP_NO_BACKEND
    put_frontend(cluster, 0, vip, drop_t, "TCP", [], TCP_PORT, drop)
    put_frontend(cluster, 0, vip, drop_u, "UDP", [], UDP_PORT, drop)
    put_frontend(cluster, 0, vip, rej_t, "TCP", [], TCP_PORT, F.NODE_PORT)
    put_frontend(cluster, 0, vip, rej_u, "UDP", [], UDP_PORT, F.NODE_PORT)

    assert cluster.client(vip, drop_t, "tcp", count=2, timeout=0.5).errors == {"ETIMEDOUT": 2}
    assert cluster.client(vip, drop_u, "udp", count=2, timeout=0.5).errors == {"ETIMEDOUT": 2}
    r = cluster.client(vip, rej_t, "tcp", count=5, timeout=2)
    assert r.errors == {"ECONNREFUSED": 5} and r.seconds < 1.5  # RST at once
    # ICMP port unreachable fails a connected UDP socket's receive.
    r = cluster.client(vip, rej_u, "udp", count=5, timeout=2, connected=True)
    assert r.errors == {"ECONNREFUSED": 5} and r.seconds < 1.5


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_external_ip_routed_to_a_node_reaches_every_pod(cluster, v6):
    vip = "fd00:99::10" if v6 else "198.51.100.10"
    port = next(_ports)
    put_frontend(cluster, 0, vip, port, "TCP", cluster.pods, TCP_PORT,
                 F.EXTERNAL_IP | F.MASQUERADE)
    t = cluster.client(vip, port, "tcp", count=120)
    assert t.errors == {} and set(t.counts) == {p.name for p in cluster.pods}
    assert {d["seen_client"] for d in t.details} == {addr(cluster.nodes[0], v6)}
    assert {d["peer"] for d in t.details} == {vip}


def test_load_balancer_ip_with_source_ranges(cluster):
    from pyagent.dataplanes.ebpf import tc

    vip, port = "198.51.100.20", next(_ports)
    node0 = cluster.nodes[0]
    rev = put_frontend(cluster, 0, vip, port, "TCP", node0.pods, TCP_PORT,
                       F.LOADBALANCER | F.LOCAL_ETP | F.SOURCE_RANGE)
    maps = cluster.lbs[0].maps
    tc.set_source_ranges(maps, rev, [f"{cluster.client_ip4}/32"])
    t = cluster.client(vip, port, "tcp", count=40)
    assert t.errors == {} and set(t.counts) == {p.name for p in node0.pods}
    assert {d["seen_client"] for d in t.details} == {cluster.client_ip4}

    tc.set_source_ranges(maps, rev, ["203.0.113.0/25"])
    assert cluster.client(vip, port, "tcp", count=2, timeout=0.5).errors == {"ETIMEDOUT": 2}
    assert bpfmaps.tc_stats(maps)["drop_range"] >= 2


def test_non_service_traffic_passes_untouched(cluster):
    node0 = cluster.nodes[0]
    port = next(_ports)
    put_frontend(cluster, 0, node0.ip4, port, "TCP", cluster.pods, TCP_PORT,
                 F.NODE_PORT | F.MASQUERADE)
    # A server of the node itself on another port, and ICMP to the node.
    server = cluster.popen([sys.executable, "-m", "pyagent.lab.server", "--name",
                            "node0-host", "--tcp", str(port + 1)], ns=node0.ns,
                           stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    t = cluster.client(node0.ip4, port + 1, "tcp", count=10)
    assert t.counts == {"node0-host": 10}
    assert {d["seen_client"] for d in t.details} == {cluster.client_ip4}
    ping = cluster.run([sys.executable, "-c", PING, node0.ip4])
    assert ping.returncode == 0, ping.stderr


def test_filters_are_ours_and_replaced_in_place(cluster):
    from pyagent.dataplanes.ebpf import tc

    node = cluster.nodes[0]
    want = {node.uplink: {"ingress": tc.PROG_NETDEV_INGRESS, "egress": tc.PROG_EGRESS}}
    want.update({p: {"ingress": tc.PROG_POD_INGRESS, "egress": tc.PROG_EGRESS}
                 for p in node.pod_links})
    want[POD_BRIDGE] = {}
    names = [node.uplink, *node.pod_links, POD_BRIDGE]
    assert tc.attached(names, node.ns) == want
    assert tc.interfaces(node.ns, ["p"]) == sorted(node.pod_links)
    # Attaching again (an agent restart) replaces, never duplicates.
    tc.attach(cluster.lbs[0], netdevs=[node.uplink], pods=node.pod_links, netns=node.ns)
    assert tc.attached(names, node.ns) == want
    port = next(_ports)
    put_frontend(cluster, 0, node.ip4, port, "TCP", cluster.pods, TCP_PORT,
                 F.NODE_PORT | F.MASQUERADE)
    assert cluster.client(node.ip4, port, "tcp", count=20).errors == {}


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_masquerade_to_local_pods_behind_the_bridge_hook(cluster, v6):
    node1 = cluster.nodes[1]
    vip = addr(node1, v6)
    port = next(_ports)
    put_frontend(cluster, 1, vip, port, "TCP", node1.pods, TCP_PORT,
                 F.NODE_PORT | F.MASQUERADE)
    t = cluster.client(vip, port, "tcp", count=40)
    assert t.errors == {} and set(t.counts) == {p.name for p in node1.pods}
    assert {d["seen_client"] for d in t.details} == {vip}
    # The bridge hook also carries ICMP errors back (no listener on 9999).
    put_frontend(cluster, 1, vip, port + 500, "UDP", node1.pods, 9999,
                 F.NODE_PORT | F.MASQUERADE)
    r = cluster.client(vip, port + 500, "udp", count=2, timeout=2, connected=True)
    assert r.errors == {"ECONNREFUSED": 2}


def test_trace_runs_the_attached_program_without_side_effects(cluster):
    from pyagent.dataplanes.ebpf import tc_trace

    node0 = cluster.nodes[0]
    port = next(_ports)
    put_frontend(cluster, 0, node0.ip4, port, "UDP", node0.pods[:1], UDP_PORT,
                 F.NODE_PORT | F.LOCAL_ETP)
    before = cluster.lbs[0].maps.lb4_ct.count()
    res = tc_trace.trace_pinned(str(node0.bpffs), "203.0.113.9", node0.ip4, port, "UDP")
    assert (res["verdict"], res["masquerade"]) == ("DNAT", False)
    assert res["endpoint"] == f"{node0.pods[0].ip4}:{UDP_PORT}"
    assert cluster.lbs[0].maps.lb4_ct.count() == before
    res = tc_trace.trace_pinned(str(node0.bpffs), "203.0.113.9", node0.ip4, port + 1000,
                                "TCP")
    assert res["verdict"] == "NO_MATCH" and res["output"]["dst"] == node0.ip4


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_backend_port_unreachable_reaches_the_client_through_the_nat(cluster, v6):
    """No listener on the target port: the pod's ICMP error is translated
    back (masqueraded via another node and local without masquerade), so the
    client's connected UDP socket fails at once instead of timing out."""
    node0, node1 = cluster.nodes
    vip = addr(node0, v6)
    masq, local = next(_ports), next(_ports)
    put_frontend(cluster, 0, vip, masq, "UDP", node1.pods[:1], 9999,
                 F.NODE_PORT | F.MASQUERADE)
    put_frontend(cluster, 0, vip, local, "UDP", node0.pods[:1], 9999,
                 F.NODE_PORT | F.LOCAL_ETP)
    for port in (masq, local):
        r = cluster.client(vip, port, "udp", count=3, timeout=2, connected=True)
        assert r.errors == {"ECONNREFUSED": 3} and r.seconds < 1.5, port


HOLD = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
first = s.makefile().readline()
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b"still there?")
time.sleep(0.2)
s.setblocking(False)
try:
    alive = s.recv(1) != b""
except BlockingIOError:
    alive = True  # nothing queued: no RST, no FIN
except OSError:
    alive = False
print("alive" if alive else "broken", first.strip(), flush=True)
"""


def test_agent_restart_keeps_established_flows(cluster):
    """A new load + setup (what a restarted agent does) reuses the pinned
    maps and conntrack and swaps the filters in place: a masqueraded TCP
    connection opened before keeps working."""
    from pyagent.dataplanes.ebpf import socket_lb, tc

    node0 = cluster.nodes[0]
    port = next(_ports)
    put_frontend(cluster, 0, node0.ip4, port, "TCP", cluster.nodes[1].pods, TCP_PORT,
                 F.NODE_PORT | F.MASQUERADE)
    held = cluster.popen([sys.executable, "-c", HOLD, node0.ip4, str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline().strip() == "connected"
    old = cluster.lbs[0]
    new = tc.setup(str(node0.bpffs), [node0.uplink], cluster.pod_hooks[0], node0.ns,
                   node0.ip4, node0.ip6, socket_lb.Capacities(1024, 1024, 1024, 64, 256, 1024),
                   tc.TcCapacities(ct=8192, src_range=64))
    cluster.lbs[0] = new
    old.close()
    out, _ = held.communicate("go\n", timeout=10)
    assert out.split()[0] == "alive", out
    assert cluster.client(node0.ip4, port, "tcp", count=10).errors == {}


def test_cleanup_removes_filters_qdiscs_and_pins():
    from ebpf import bpffs
    from pyagent.dataplanes.ebpf import socket_lb, tc
    from pyagent.lab.cluster import Cluster

    with Cluster(nodes=1, pods_per_node=1) as c:
        node = c.nodes[0]
        fs = str(node.bpffs)
        ifaces = [node.uplink, *node.pod_links]
        lb = tc.setup(fs, [node.uplink], node.pod_links, node.ns, node.ip4, None,
                      socket_lb.Capacities(64, 64, 64, 64, 64, 64), tc.TcCapacities(64, 64))
        lb.close()
        assert all(tc.attached(ifaces, node.ns).values())
        qdiscs = c.node_exec(0, "tc", "qdisc", "show", "dev", node.uplink).stdout
        assert "clsact" in qdiscs
        assert tc.cleanup(fs, ifaces, node.ns) == 2 * len(ifaces) + len(L.TC_MAPS) + 3
        assert tc.attached(ifaces, node.ns) == {i: {} for i in ifaces}
        assert "clsact" not in c.node_exec(0, "tc", "qdisc", "show", "dev", node.uplink).stdout
        assert not [p for p in bpffs.list_pins(fs) if "/tc/" in p or "_ct_" in p]
        assert tc.cleanup(fs, ifaces, node.ns) == 0  # second run: no-op
        socket_lb.cleanup(fs)


BULK_SERVER = r"""
import hashlib, socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
def serve(c):
    with c:
        h = hashlib.sha256()
        while data := c.recv(1 << 16):
            h.update(data)
        c.sendall(h.hexdigest().encode() + bytes(range(256)) * (1 << 14))
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

BULK_CLIENT = r"""
import hashlib, os, socket, sys
data = os.urandom(4 << 20)
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(1 << 16):
        got += chunk
ok_up = got[:64].decode() == hashlib.sha256(data).hexdigest()
ok_down = got[64:] == bytes(range(256)) * (1 << 14)
print(ok_up, ok_down, len(got))
"""


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_bulk_transfer_both_ways_through_the_nat(cluster, v6):
    """Megabytes each way: offloaded (GSO/GRO, partial checksum) segments
    are rewritten correctly on the masqueraded and the local path."""
    node0, node1 = cluster.nodes
    target = 9006 if v6 else 9004
    for pod in (node0.pods[1], node1.pods[1]):
        srv = cluster.popen([sys.executable, "-c", BULK_SERVER, str(target)], ns=pod.ns,
                            stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
    vip = addr(node0, v6)
    masq, local = next(_ports), next(_ports)
    put_frontend(cluster, 0, vip, masq, "TCP", [node1.pods[1]], target,
                 F.NODE_PORT | F.MASQUERADE)
    put_frontend(cluster, 0, vip, local, "TCP", [node0.pods[1]], target,
                 F.NODE_PORT | F.LOCAL_ETP)
    for port in (masq, local):
        r = cluster.run([sys.executable, "-c", BULK_CLIENT, vip, str(port)], timeout=60)
        assert r.stdout.split() == ["True", "True", str(64 + (4 << 20))], (port, r.stderr)


KIND_FLAGS = {"nodeport": F.NODE_PORT, "externalip": F.EXTERNAL_IP, "lb": F.LOADBALANCER}
_vips = itertools.count(30)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("policy", ["Cluster", "Local"])
@pytest.mark.parametrize("kind", sorted(KIND_FLAGS))
def test_flow_matrix(cluster, kind, policy, proto, v6):
    """Every frontend kind x traffic policy x protocol x family: only the
    expected pods answer, all of them over many flows, and they see the
    client exactly when there is no masquerade."""
    node0 = cluster.nodes[0]  # the client's VIP routes point here too
    if kind == "nodeport":
        vip = addr(node0, v6)
    else:
        n = next(_vips)
        vip = f"fd00:99::{n:x}" if v6 else f"198.51.100.{n}"
    port = next(_ports)
    local = policy == "Local"
    pods = node0.pods if local else cluster.pods
    flags = KIND_FLAGS[kind] | (F.LOCAL_ETP if local else F.MASQUERADE)
    target = TCP_PORT if proto == "tcp" else UDP_PORT
    put_frontend(cluster, 0, vip, port, proto.upper(), pods, target, flags)

    r = cluster.client(vip, port, proto, count=80 if proto == "tcp" else 40)
    assert r.errors == {} and set(r.counts) == {p.name for p in pods}
    seen = client_ip(cluster, v6) if local else addr(node0, v6)
    assert {d["seen_client"] for d in r.details} == {seen}


FRAGMENTED = r"""
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"small")
print(s.recv(4096) != b"", end=" ")
s.send(b"x" * 3000)  # over the 1500-byte MTU: two IPv4 fragments
try:
    s.recv(4096)
    print("answered")
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout"))
"""


def test_fragmented_datagrams_are_not_half_translated(cluster):
    """Documented behaviour: fragments carry no ports, so they pass
    untouched and the node itself answers (port unreachable), instead of a
    backend getting a first fragment without the rest."""
    node0 = cluster.nodes[0]
    port = next(_ports)
    put_frontend(cluster, 0, node0.ip4, port, "UDP", node0.pods, UDP_PORT,
                 F.NODE_PORT | F.MASQUERADE)
    before = tc_stat(cluster, 0, "fragment")
    r = cluster.run([sys.executable, "-c", FRAGMENTED, node0.ip4, str(port)])
    assert r.stdout.split() == ["True", "ECONNREFUSED"], r.stderr
    assert tc_stat(cluster, 0, "fragment") >= before + 2


def tc_stat(cluster, node_index: int, name: str) -> int:

    return bpfmaps.tc_stats(cluster.lbs[node_index].maps)[name]


def test_vip_routes_can_move_to_another_node(cluster):
    vip, port = "198.51.100.99", next(_ports)
    node1 = cluster.nodes[1]
    put_frontend(cluster, 1, vip, port, "TCP", node1.pods, TCP_PORT,
                 F.EXTERNAL_IP | F.LOCAL_ETP)
    cluster.route_vips(1)
    try:
        r = cluster.client(vip, port, "tcp", count=20)
    finally:
        cluster.route_vips(0)
    assert r.errors == {} and set(r.counts) == {p.name for p in node1.pods}
    assert {d["seen_client"] for d in r.details} == {cluster.client_ip4}


@pytest.mark.parametrize("policy", ["Cluster", "Local"])
def test_host_network_backends(cluster, policy):
    """Endpoints on node addresses (hostNetwork pods): the local one is
    delivered to the node's own stack, the remote one forwarded; replies
    leave with the frontend address either way."""
    from types import SimpleNamespace

    node0 = cluster.nodes[0]
    hport = 7100 if policy == "Cluster" else 7101
    for i, node in enumerate(cluster.nodes):
        srv = cluster.popen([sys.executable, "-m", "pyagent.lab.server", "--name",
                             f"host{i}", "--tcp", str(hport)], ns=node.ns,
                            stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
    # Backends that are node addresses, node0's being local.
    hosts = [SimpleNamespace(ip4=n.ip4, ip6=n.ip6) for n in cluster.nodes]
    port = next(_ports)
    if policy == "Cluster":
        put_frontend(cluster, 0, node0.ip4, port, "TCP", hosts, hport,
                     F.NODE_PORT | F.MASQUERADE, local=hosts[:1])
    else:
        put_frontend(cluster, 0, node0.ip4, port, "TCP", hosts[:1], hport,
                     F.NODE_PORT | F.LOCAL_ETP, local=hosts[:1])
    r = cluster.client(node0.ip4, port, "tcp", count=40)
    want = {"host0", "host1"} if policy == "Cluster" else {"host0"}
    assert r.errors == {} and set(r.counts) == want
    assert {d["peer"] for d in r.details} == {node0.ip4}
    if policy == "Local":
        assert {d["seen_client"] for d in r.details} == {cluster.client_ip4}
    else:  # the remote one is masqueraded, the local one never leaves the node
        seen = {d["pod"]: d["seen_client"] for d in r.details}
        assert seen["host1"] == node0.ip4
