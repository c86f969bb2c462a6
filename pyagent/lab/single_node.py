"""Lab construction and teardown (see the package docstring for the topology)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "pal"  # every netns, cgroup and mount of a lab starts with this
POD_NET4, POD_NET6 = "10.244.0", "fd00:244::"


def cgroup2_mount() -> Path:
    """The cgroup v2 mount point, from /proc/mounts (never hard-coded)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise RuntimeError("no cgroup2 mount in /proc/mounts")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def join_cgroup(cgroup: Path) -> None:
    """Move the calling process into a cgroup (used as preexec_fn)."""
    (cgroup / "cgroup.procs").write_text("0")


@dataclass
class Pod:
    name: str
    ns: str
    ip4: str
    ip6: str
    server: subprocess.Popen | None = None


@dataclass
class ClientResult:
    counts: dict[str, int]
    errors: dict[str, int]
    details: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    held: dict[str, int] = field(default_factory=dict)  # pods of --hold connections

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Lab:
    """One node namespace with pods on a bridge, a lab cgroup and a bpffs."""

    def __init__(self, pods: int = 3, tcp_ports: Sequence[int] = (8080, 9090),
                 udp_ports: Sequence[int] = (5353,)) -> None:
        self.id = secrets.token_hex(3)
        # The creator's pid is in every name: sweep() spares labs of live processes.
        self.tag = f"{PREFIX}{os.getpid()}x{self.id}"
        self.node_ns = f"{self.tag}-node"
        self.tcp_ports, self.udp_ports = tuple(tcp_ports), tuple(udp_ports)
        self.pods: list[Pod] = []
        self.cgroup = cgroup2_mount() / f"{self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.bpffs = self.tmp / "bpffs"
        self._procs: list[subprocess.Popen] = []
        try:
            self._build(pods)
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------
    def _build(self, pods: int) -> None:
        self.cgroup.mkdir()
        self.bpffs.mkdir()
        sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        sh("ip", "netns", "add", self.node_ns)
        n = ["ip", "-n", self.node_ns]
        sh(*n, "link", "set", "lo", "up")
        sh(*n, "link", "add", "br0", "type", "bridge")
        sh(*n, "addr", "add", f"{POD_NET4}.1/24", "dev", "br0")
        sh(*n, "addr", "add", f"{POD_NET6}1/64", "dev", "br0", "nodad")
        sh(*n, "link", "set", "br0", "up")
        for i in range(pods):
            self.add_pod(f"pod{i}")

    def add_pod(self, name: str) -> Pod:
        i = len(self.pods)
        pod = Pod(name, f"{self.tag}-{name}", f"{POD_NET4}.{10 + i}", f"{POD_NET6}{10 + i:x}")
        sh("ip", "netns", "add", pod.ns)
        host_if = f"v{self.id}{i}"[:15]
        sh("ip", "-n", self.node_ns, "link", "add", host_if, "type", "veth",
           "peer", "name", "eth0", "netns", pod.ns)
        sh("ip", "-n", self.node_ns, "link", "set", host_if, "master", "br0", "up")
        p = ["ip", "-n", pod.ns]
        sh(*p, "link", "set", "lo", "up")
        sh(*p, "addr", "add", f"{pod.ip4}/24", "dev", "eth0")
        sh(*p, "addr", "add", f"{pod.ip6}/64", "dev", "eth0", "nodad")
        sh(*p, "link", "set", "eth0", "up")
        sh(*p, "route", "add", "default", "via", f"{POD_NET4}.1")
        sh(*p, "-6", "route", "add", "default", "via", f"{POD_NET6}1")
        pod.server = self._start_server(pod)
        self.pods.append(pod)
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

    def delete_pod(self, pod: Pod) -> None:
        """The pod goes away for real and silently (no ICMP from a closing
        server): its link first, then its server and namespace."""
        i = self.pods.index(pod)
        sh("ip", "-n", self.node_ns, "link", "del", f"v{self.id}{i}"[:15], check=False)
        self.stop_pod_server(pod)
        sh("ip", "netns", "del", pod.ns, check=False)

    def stop_pod_server(self, pod: Pod) -> None:
        if pod.server:
            pod.server.kill()
            pod.server.wait()
            pod.server = None

    def add_routed_pod(self, name: str, ip4: str = "10.244.1.2") -> Pod:
        """A client pod routed by the node (no bridge): its traffic always
        crosses the node's IP layer (PREROUTING/FORWARD), and replies to it are
        routed back through the node, so rule-based modes need no br_netfilter.
        The node side of the veth also carries the first node IP (/32), as
        REDIRECT needs an address on the incoming interface."""
        i = len(self.pods)
        pod = Pod(name, f"{self.tag}-{name}", ip4, "")
        sh("ip", "netns", "add", pod.ns)
        host_if = f"r{self.id}{i}"[:15]
        sh("ip", "-n", self.node_ns, "link", "add", host_if, "type", "veth",
           "peer", "name", "eth0", "netns", pod.ns)
        sh("ip", "-n", self.node_ns, "addr", "add", f"{POD_NET4}.1/32", "dev", host_if)
        sh("ip", "-n", self.node_ns, "link", "set", host_if, "up")
        sh("ip", "-n", self.node_ns, "route", "add", f"{ip4}/32", "dev", host_if)
        p = ["ip", "-n", pod.ns]
        sh(*p, "link", "set", "lo", "up")
        sh(*p, "addr", "add", f"{ip4}/32", "dev", "eth0")
        sh(*p, "link", "set", "eth0", "up")
        sh(*p, "route", "add", f"{POD_NET4}.1/32", "dev", "eth0")
        sh(*p, "route", "add", "default", "via", f"{POD_NET4}.1", "dev", "eth0")
        self.pods.append(pod)
        return pod

    def enable_routing(self, service_cidr: str = "10.96.0.0/12") -> None:
        """What a CNI and the node's default route give a real node: forwarding
        in the node namespace and a route for Service VIPs, so packets to a
        VIP reach the NAT hooks of iptables/nftables/IPVS modes."""
        sh("ip", "netns", "exec", self.node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", self.node_ns, "sysctl", "-qw",
           "net.ipv6.conf.all.forwarding=1")
        sh("ip", "-n", self.node_ns, "route", "add", service_cidr, "dev", "br0")

    def node_exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command (iptables, nft, conntrack...) in the node namespace."""
        return sh("ip", "netns", "exec", self.node_ns, *cmd, check=check)

    # -- running things -----------------------------------------------------
    def popen(self, cmd: Sequence[str], ns: str | None = None, in_cgroup: bool = True,
              **kw) -> subprocess.Popen:
        """Start a command in a lab namespace (default: the node), inside the
        lab cgroup so the agent's socket programs apply to it."""
        full = ["ip", "netns", "exec", ns or self.node_ns, *cmd]
        pre = (lambda: join_cgroup(self.cgroup)) if in_cgroup else None
        proc = subprocess.Popen(full, preexec_fn=pre, **kw)
        self._procs.append(proc)
        return proc

    def agent(self, args: Sequence[str], **kw) -> subprocess.Popen:
        """Start `pyagent ARGS` in the node namespace, outside the lab cgroup.
        nsenter (unlike `ip netns exec`) keeps /sys, so cgroup paths resolve."""
        cmd = ["nsenter", f"--net=/run/netns/{self.node_ns}", sys.executable, "-m", "pyagent",
               *args]
        proc = subprocess.Popen(cmd, **kw)
        self._procs.append(proc)
        return proc

    def run(self, cmd: Sequence[str], ns: str | None = None, in_cgroup: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        proc = self.popen(cmd, ns, in_cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def _client_cmd(self, dst: str, port: int, proto: str, count: int,
                    opts: dict[str, object]) -> list[str]:
        cmd = [sys.executable, "-m", "pyagent.lab.client", "--dst", dst, "--port", str(port),
               "--proto", proto, "--count", str(count)]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                cmd.append(flag)
            elif v not in (False, None):
                cmd += [flag, str(v)]
        return cmd

    def client(self, dst: str, port: int, proto: str = "tcp", count: int = 100,
               ns: str | None = None, **opts: object) -> ClientResult:
        res = self.run(self._client_cmd(dst, port, proto, count, opts), ns)
        if res.returncode != 0:
            raise RuntimeError(f"lab client failed: {res.stderr}")
        return ClientResult(**json.loads(res.stdout))

    def client_start(self, dst: str, port: int, proto: str = "tcp", count: int = 100,
                     ns: str | None = None, **opts: object) -> subprocess.Popen:
        """A client in the background; `client_result(proc)` collects it."""
        return self.popen(self._client_cmd(dst, port, proto, count, opts), ns,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def client_result(proc: subprocess.Popen, timeout: float = 120) -> ClientResult:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"lab client failed: {err}")
        return ClientResult(**json.loads(out))

    # -- teardown -----------------------------------------------------------
    def close(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._procs.clear()
        _remove_cgroup(self.cgroup)
        for ns in [p.ns for p in self.pods] + [self.node_ns]:
            sh("ip", "netns", "del", ns, check=False)
        if self.bpffs.is_dir():
            sh("umount", str(self.bpffs), check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def sweep() -> None:
        """Remove what crashed labs left behind: only names with our prefix
        whose creating process is gone (concurrent test runs are spared)."""
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if _stale(name):
                sh("ip", "netns", "del", name, check=False)
        for cg in cgroup2_mount().glob(f"{PREFIX}*"):
            if _stale(cg.name):
                _remove_cgroup(cg)
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if parts[2] == "bpf" and _stale(Path(parts[1]).parent.name):
                sh("umount", parts[1], check=False)
        for tmp in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
            if _stale(tmp.name):
                shutil.rmtree(tmp, ignore_errors=True)


def _stale(name: str) -> bool:
    m = re.match(rf"{PREFIX}(\d+)x", name)
    if not m:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _remove_cgroup(cg: Path) -> None:
    if not cg.is_dir():
        return
    kill = cg / "cgroup.kill"
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
    for _ in range(50):
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    os.rmdir(cg)  # raise with the real error
