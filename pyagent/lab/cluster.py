"""A multi-node lab for north-south traffic: nodes, pods, a fabric and an
external client, all in network namespaces this process creates.

Topology (N nodes, n = 0..N-1):

    fabric netns: bridge fab0 ------------------------------------------+
      |-- veth -- node netns {tag}-n<n>: eth0 192.168.50.(10+n)/24      |
      |             fd00:50::(10+n)/64   (the node IP; TC attach point)  |
      |             br0 10.244.n.1/24 fd00:244:n::1/64 (pod bridge)      |
      |               |-- veth p<i> -- pod netns: eth0 10.244.n.(10+i)   |
      |                                fd00:244:n::(10+i), identity server|
      |             routes: other nodes' pod CIDRs via their node IPs    |
      |             forwarding on, ICMP redirects off                    |
      |-- veth -- client netns {tag}-client: eth0 192.168.50.100/24     |
                    fd00:50::100/64; routes to the VIP ranges (externalIPs,
                    LB IPs) via one node (route_vips)  -------------------+

Each node also gets a private cgroup (for its agent's socket LB) and a
private bpffs. Names carry Lab's prefix with this process's pid, so
`Lab.sweep()` (also `Cluster.sweep()`) removes what a crashed run left and
spares live ones. Nothing here touches the root namespace's interfaces or
the root cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyagent.lab.single_node import (
    PREFIX,
    ClientResult,
    Lab,
    Pod,
    _remove_cgroup,
    _stale,
    cgroup2_mount,
    join_cgroup,
    sh,
)

FABRIC4, FABRIC6 = "192.168.50", "fd00:50::"
CLIENT_IP4, CLIENT_IP6 = f"{FABRIC4}.100", f"{FABRIC6}100"
VIP_RANGE4, VIP_RANGE6 = "198.51.100.0/24", "fd00:99::/64"
CLUSTER_CIDR4, CLUSTER_CIDR6 = "10.244.0.0/16", "fd00:244::/48"  # every node's pod CIDR
UPLINK = "eth0"  # the node interface facing the fabric
POD_BRIDGE = "br0"


def node_ip4(n: int) -> str:
    return f"{FABRIC4}.{10 + n}"


def node_ip6(n: int) -> str:
    return f"{FABRIC6}{10 + n:x}"


_OFFLOADS_OFF = """
from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
e = Ethtool()
for link in IPRoute().get_links():
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
        continue
    name = link.get_attr("IFLA_IFNAME")
    f = e.get_features(name)
    for k in ("tx-checksum-ip-generic", "rx-checksum"):
        f.features[k].enable = False
    e.set_features(name, f)
"""


@dataclass
class Node:
    index: int
    name: str  # "node<n>": the Kubernetes node name agents use
    ns: str
    ip4: str
    ip6: str
    pod_cidr4: str
    pod_cidr6: str
    cgroup: Path
    bpffs: Path
    pods: list[Pod] = field(default_factory=list)
    pod_links: list[str] = field(default_factory=list)  # host side of pod veths

    @property
    def uplink(self) -> str:
        return UPLINK

    def agent_args(self) -> list[str]:
        """Flags that point `pyagent run` at this node's own objects."""
        return ["--node-name", self.name, "--node-ip", self.ip4, "--node-ip", self.ip6,
                "--cluster-cidr", CLUSTER_CIDR4, "--cluster-cidr", CLUSTER_CIDR6,
                "--bpffs", str(self.bpffs), "--cgroup", str(self.cgroup),
                "--interface", UPLINK]


class Cluster:
    """N nodes with pods, a fabric bridge and an external client namespace."""

    def __init__(self, nodes: int = 2, pods_per_node: int = 2,
                 tcp_ports: Sequence[int] = (8080,), udp_ports: Sequence[int] = (5353,),
                 vip_via: int = 0) -> None:
        if not 1 <= nodes <= 200 or not 0 <= pods_per_node <= 200:
            raise ValueError("1..200 nodes, 0..200 pods per node")
        self.id = secrets.token_hex(3)
        self.tag = f"{PREFIX}{os.getpid()}x{self.id}"  # Lab.sweep's stale-name format
        self.fabric_ns = f"{self.tag}-fabric"
        self.client_ns = f"{self.tag}-client"
        self.client_ip4, self.client_ip6 = CLIENT_IP4, CLIENT_IP6
        self.tcp_ports, self.udp_ports = tuple(tcp_ports), tuple(udp_ports)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.nodes: list[Node] = []
        self._namespaces: list[str] = []
        self._cgroups: list[Path] = []
        self._mounts: list[Path] = []
        self._procs: list[subprocess.Popen] = []
        try:
            self._build(nodes, pods_per_node, vip_via)
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------
    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _sysctl(self, ns: str, *settings: str) -> None:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", *settings)

    def _build(self, nodes: int, pods_per_node: int, vip_via: int) -> None:
        self._netns(self.fabric_ns)
        f = ["ip", "-n", self.fabric_ns]
        sh(*f, "link", "add", "fab0", "type", "bridge")
        sh(*f, "link", "set", "fab0", "up")
        for n in range(nodes):
            self._add_node(n)
        for node in self.nodes:  # every node reaches every other's pods
            for other in self.nodes:
                if other is not node:
                    sh("ip", "-n", node.ns, "route", "add", other.pod_cidr4, "via", other.ip4)
                    sh("ip", "-n", node.ns, "-6", "route", "add", other.pod_cidr6,
                       "via", other.ip6)
        self._netns(self.client_ns)
        self._uplink(self.client_ns, "client", CLIENT_IP4, CLIENT_IP6)
        self.route_vips(vip_via)
        for node in self.nodes:
            for i in range(pods_per_node):
                self.add_pod(node.index, f"{node.name}-pod{i}")

    def _uplink(self, ns: str, fabric_if: str, ip4: str, ip6: str) -> None:
        sh("ip", "-n", self.fabric_ns, "link", "add", fabric_if, "type", "veth",
           "peer", "name", UPLINK, "netns", ns)
        sh("ip", "-n", self.fabric_ns, "link", "set", fabric_if, "master", "fab0", "up")
        n = ["ip", "-n", ns]
        sh(*n, "addr", "add", f"{ip4}/24", "dev", UPLINK)
        sh(*n, "addr", "add", f"{ip6}/64", "dev", UPLINK, "nodad")
        sh(*n, "link", "set", UPLINK, "up")

    def _add_node(self, n: int) -> None:
        name = f"node{n}"
        node = Node(n, name, f"{self.tag}-n{n}", node_ip4(n), node_ip6(n),
                    f"10.244.{n}.0/24", f"fd00:244:{n:x}::/64",
                    cgroup2_mount() / f"{self.tag}-n{n}", self.tmp / f"bpffs-n{n}")
        self.nodes.append(node)
        self._netns(node.ns)
        # Before any interface exists, so "default" reaches them all. Nodes
        # route (forwarded NodePort traffic leaves where it came in: no
        # redirects) and NAT makes asymmetric-looking paths: no rp_filter.
        self._sysctl(node.ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                     "net.ipv4.conf.all.send_redirects=0",
                     "net.ipv4.conf.default.send_redirects=0",
                     "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        self._uplink(node.ns, name, node.ip4, node.ip6)
        b = ["ip", "-n", node.ns]
        # A fixed address: a bridge otherwise takes the lowest of its ports'
        # and changes it when a pod joins, leaving pods' neighbour entries
        # for their gateway stale.
        sh(*b, "link", "add", POD_BRIDGE, "address", f"02:00:00:00:{n:02x}:01", "type", "bridge")
        sh(*b, "addr", "add", f"10.244.{n}.1/24", "dev", POD_BRIDGE)
        sh(*b, "addr", "add", f"fd00:244:{n:x}::1/64", "dev", POD_BRIDGE, "nodad")
        sh(*b, "link", "set", POD_BRIDGE, "up")
        node.cgroup.mkdir()
        self._cgroups.append(node.cgroup)
        node.bpffs.mkdir()
        sh("mount", "-t", "bpf", "bpf", str(node.bpffs))
        self._mounts.append(node.bpffs)

    def add_pod(self, node_index: int, name: str) -> Pod:
        """A pod on a node's bridge running the identity server."""
        node = self.nodes[node_index]
        i = len(node.pods)
        n = node.index
        pod = Pod(name, f"{self.tag}-n{n}p{i}", f"10.244.{n}.{10 + i}",
                  f"fd00:244:{n:x}::{10 + i:x}")
        self._netns(pod.ns)
        host_if = f"p{i}"
        sh("ip", "-n", node.ns, "link", "add", host_if, "type", "veth",
           "peer", "name", "eth0", "netns", pod.ns)
        sh("ip", "-n", node.ns, "link", "set", host_if, "master", POD_BRIDGE, "up")
        p = ["ip", "-n", pod.ns]
        sh(*p, "addr", "add", f"{pod.ip4}/24", "dev", "eth0")
        sh(*p, "addr", "add", f"{pod.ip6}/64", "dev", "eth0", "nodad")
        sh(*p, "link", "set", "eth0", "up")
        sh(*p, "route", "add", "default", "via", f"10.244.{n}.1")
        sh(*p, "-6", "route", "add", "default", "via", f"fd00:244:{n:x}::1")
        pod.server = self._start_server(pod)
        node.pods.append(pod)
        node.pod_links.append(host_if)
        return pod

    def _start_server(self, pod: Pod) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", pod.ns, sys.executable, "-m", "pyagent.lab.server",
               "--name", pod.name]
        cmd += [a for p in self.tcp_ports for a in ("--tcp", str(p))]
        cmd += [a for p in self.udp_ports for a in ("--udp", str(p))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"identity server in {pod.ns} did not start")
        return proc

    def route_vips(self, node_index: int, ranges: Sequence[str] = (VIP_RANGE4, VIP_RANGE6)
                   ) -> None:
        """Send the client's traffic for the VIP ranges (externalIPs, LB IPs)
        to one node, as an upstream router or a BGP/ARP speaker would."""
        node = self.nodes[node_index]
        for cidr in ranges:
            via = node.ip6 if ":" in cidr else node.ip4
            sh("ip", "-n", self.client_ns, "route", "replace", cidr, "via", via)

    def wire_checksums(self) -> None:
        """Checksum offloads off on every veth of the lab, so that packets
        carry complete checksums as a NIC's wire traffic does (a veth passes
        CHECKSUM_PARTIAL on, which XDP cannot tell: docs/north-south.md)."""
        namespaces = [self.fabric_ns, self.client_ns, *(n.ns for n in self.nodes),
                      *(p.ns for p in self.pods)]
        for ns in namespaces:
            sh("ip", "netns", "exec", ns, sys.executable, "-c", _OFFLOADS_OFF)

    # -- accessors ----------------------------------------------------------
    @property
    def pods(self) -> list[Pod]:
        return [p for node in self.nodes for p in node.pods]

    def node_of(self, pod: Pod) -> Node:
        return next(n for n in self.nodes if pod in n.pods)

    # -- running things -----------------------------------------------------
    def popen(self, cmd: Sequence[str], ns: str | None = None, cgroup: Path | None = None,
              **kw) -> subprocess.Popen:
        """Start a command in a lab namespace (default: the client), joining
        cgroup first when given (`ip netns exec` hides /sys/fs/cgroup)."""
        full = ["ip", "netns", "exec", ns or self.client_ns, *cmd]
        pre = (lambda: join_cgroup(cgroup)) if cgroup is not None else None
        proc = subprocess.Popen(full, preexec_fn=pre, **kw)
        self._procs.append(proc)
        return proc

    def run(self, cmd: Sequence[str], ns: str | None = None, cgroup: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        proc = self.popen(cmd, ns, cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def node_exec(self, node_index: int, *cmd: str, check: bool = True
                  ) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.nodes[node_index].ns, *cmd, check=check)

    def client(self, dst: str, port: int, proto: str = "tcp", count: int = 100,
               ns: str | None = None, **opts: object) -> ClientResult:
        """Run the lab client (default: from the external client namespace)."""
        cmd = [sys.executable, "-m", "pyagent.lab.client", "--dst", dst, "--port", str(port),
               "--proto", proto, "--count", str(count)]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                cmd.append(flag)
            elif v not in (False, None):
                cmd += [flag, str(v)]
        res = self.run(cmd, ns)
        if res.returncode != 0:
            raise RuntimeError(f"lab client failed: {res.stderr}")
        return ClientResult(**json.loads(res.stdout))

    def agent(self, node_index: int, args: Sequence[str], **kw) -> subprocess.Popen:
        """Start `pyagent ARGS` in a node's namespace, outside its cgroup.
        nsenter (unlike `ip netns exec`) keeps /sys, so cgroup paths resolve.
        Node.agent_args() gives the flags for the node's own objects."""
        node = self.nodes[node_index]
        cmd = ["nsenter", f"--net=/run/netns/{node.ns}", sys.executable, "-m", "pyagent",
               *args]
        proc = subprocess.Popen(cmd, **kw)
        self._procs.append(proc)
        return proc

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._procs.clear()
        # Deleting a namespace removes its interfaces and their TC filters.
        for ns in reversed(self._namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        for cg in self._cgroups:
            with contextlib.suppress(OSError):
                _remove_cgroup(cg)
        self._cgroups.clear()
        for mnt in self._mounts:
            sh("umount", str(mnt), check=False)  # pins (maps, links) go with it
        self._mounts.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def sweep() -> None:
        """Remove what crashed clusters (and labs) left behind; spares live
        runs. Processes still running in a stale namespace (identity servers,
        agents) are killed first: deleting the namespace would orphan them."""
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if not _stale(name):
                continue
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        Lab.sweep()
