"""Test helper: `pyagent run` in a namespace lab, fed from a manifests
directory the test rewrites, observed through `pyagent maps dump`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from pyagent.lab import Lab


def service(name: str, vips: Iterable[str], ports: list[tuple[str, str, int]],
            ns: str = "default", **spec: Any) -> dict:
    vips = list(vips)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": vips[0], "clusterIPs": vips,
                     "ipFamilies": ["IPv6" if ":" in v else "IPv4" for v in vips],
                     "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
                     **spec}}


def endpoint(ip: str, ready: bool = True, node: str = "node-1", serving: bool | None = None,
             terminating: bool | None = None, zones: list[str] | None = None) -> dict:
    cond: dict[str, bool] = {"ready": ready}
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    ep: dict[str, Any] = {"addresses": [ip], "conditions": cond, "nodeName": node}
    if zones:
        ep["hints"] = {"forZones": [{"name": z} for z in zones]}
    return ep


def slice_(svc: str, name: str, family: int, ports: list[tuple[str, str, int]],
           endpoints: list[tuple[str, bool] | dict], ns: str = "default",
           node: str = "node-1") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": f"IPv{family}",
            "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
            "endpoints": [e if isinstance(e, dict) else endpoint(e[0], e[1], node)
                          for e in endpoints]}


def dual_stack(name: str, ns: str, cips: tuple[str, str], ports: list[tuple],
               backends: Iterable[tuple[str, Any]], **spec: Any) -> list[dict]:
    """A RequireDualStack Service and one EndpointSlice per family for the
    multi-node lab. ports: (name, protocol, port, targetPort[, nodePort]);
    backends: (node name, pod) with the pod's ip4 / ip6."""
    backends = list(backends)
    svc_ports = [{"name": p[0], "protocol": p[1], "port": p[2],
                  **({"nodePort": p[4]} if len(p) > 4 else {})} for p in ports]
    svc = service(name, cips, [], ns, ipFamilyPolicy="RequireDualStack", **spec)
    svc["spec"]["ports"] = svc_ports
    slices = [slice_(name, f"{name}-{fam}", fam, [(p[0], p[1], p[3]) for p in ports],
                     [{"addresses": [pod.ip4 if fam == 4 else pod.ip6], "nodeName": node}
                      for node, pod in backends], ns)
              for fam in (4, 6)]
    return [svc, *slices]


class AgentLab:
    def __init__(self, lab: Lab, node: str = "node-1") -> None:
        self.lab = lab
        self.node = node
        self.manifests = lab.tmp / "manifests"
        self.manifests.mkdir()
        self.bpffs = str(lab.bpffs / "pyagent")
        self.log = lab.tmp / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.last_error = ""

    def write(self, name: str, *objects: dict) -> None:
        """Atomically replace one manifest file (rename, so no half-read)."""
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(objects))
        tmp.rename(self.manifests / name)

    def write_raw(self, name: str, text: str) -> None:
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(self.manifests / name)

    def remove(self, name: str) -> None:
        (self.manifests / name).unlink()

    def start(self, *extra: str) -> None:
        self.proc = self.lab.agent(
            ["run", "--manifests", str(self.manifests), "--node-name", self.node,
             "--cgroup", str(self.lab.cgroup), "--bpffs", self.bpffs,
             "--healthz-bind-address", "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0",
             *extra],
            stdout=subprocess.DEVNULL, stderr=self.log.open("a"))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=15)
        self.proc = None
        return rc

    def logs(self) -> str:
        return self.log.read_text()

    def pyagent(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyagent", *args], capture_output=True,
                              text=True, timeout=60)

    def dump(self) -> dict:
        res = self.pyagent("maps", "dump", "--bpffs", self.bpffs, "--json")
        if res.returncode != 0:
            self.last_error = res.stderr
            return {"services": [], "backends": []}
        return json.loads(res.stdout)

    def frontends(self) -> dict[tuple[str, int, str], list[str]]:
        """(VIP, port, proto) -> sorted "ip:port" of the internal-scope backends."""
        out = {}
        for s in self.dump()["services"]:
            fe = s["frontend"]
            if fe["scope"] == "internal":
                out[(fe["address"], fe["port"], fe["protocol"])] = sorted(
                    f"{b['address']}:{b['port']}" for b in s["backends"])
        return out

    def synced(self) -> bool:
        """The running agent finished a sync (its status file says so): its
        first full sync has put the programs in place, not only filled the
        maps (which it does while they still compile)."""
        from pyagent.observe import statusfile

        st = statusfile.read(self.bpffs)
        return bool(st) and (self.proc is None or st.get("pid") == self.proc.pid)

    def wait(self, cond: Callable[[dict], bool], what: str, timeout: float = 30) -> dict:
        """Until the maps meet `cond`, once the agent has synced."""
        # under qemu without KVM (vagrant/qemu-run) everything is ~10x slower
        timeout *= float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1"))
        deadline = time.monotonic() + timeout
        while True:
            fes = self.frontends()
            if cond(fes) and self.synced():
                return fes
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited while waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; maps: {fes}\n"
                                     f"{self.last_error}\n{self.logs()}")
            time.sleep(0.1)


@contextlib.contextmanager
def agent_lab(pods: int, stop_signal: int = signal.SIGTERM) -> Iterator[AgentLab]:
    """A Lab with an AgentLab on it; the agent stopped and its state cleaned
    up afterwards, also when the test failed."""
    with Lab(pods=pods) as lab:
        a = AgentLab(lab)
        try:
            yield a
        finally:
            if a.proc is not None:
                a.stop(stop_signal)
            a.pyagent("cleanup", "--bpffs", a.bpffs, "--cgroup", str(lab.cgroup))


def pods_for(lab: Lab, ips: Iterable[str]) -> set[str]:
    by_ip = {p.ip4: p.name for p in lab.pods} | {p.ip6: p.name for p in lab.pods}
    return {by_ip[ip] for ip in ips}


def here() -> Path:
    return Path(__file__).resolve().parent


def sync_marker(generation: int) -> dict:
    """A Service unique to one write of a manifests directory: once the agent
    has programmed it, it has programmed everything written with it."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"zz-sync-{generation}", "namespace": "pyagent-test"},
            "spec": {"clusterIP": f"10.255.{generation // 250 % 250}.{generation % 250 + 1}",
                     "ports": [{"name": "m", "port": 1, "protocol": "TCP"}]}}


def wait_for_marker(bpffs: str, marker: dict, proc: subprocess.Popen | None, log: Path,
                    timeout: float = 90) -> None:
    from pyagent.observe import statusfile

    name = f"pyagent-test/{marker['metadata']['name']}:m"
    # a VM under TCG compiles about 15x slower (vagrant/qemu-run sets the scale)
    deadline = time.monotonic() + timeout * float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1"))
    while time.monotonic() < deadline:
        st = statusfile.read(bpffs)
        if st and name in {fe["service"] for fe in st.get("frontends", [])}:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"agent did not program {name}:\n{log.read_text()[-3000:]}")


# Three ClusterIPs of one TCP port for verdict tests (monitor, trace --bpf):
# served by every pod, without endpoints (REJECT), and iTP=Local with
# endpoints only on another node (DROP).
VERDICT_VIPS = ("10.96.0.10", "10.96.0.20", "10.96.0.30")


@contextlib.contextmanager
def verdict_lab() -> Iterator[AgentLab]:
    vip, empty, remote = VERDICT_VIPS
    tcp, target = [("http", "TCP", 80)], [("http", "TCP", 8080)]
    with agent_lab(3) as a:
        pods = a.lab.pods
        a.write("svc.yaml", service("echo", [vip], tcp), service("empty", [empty], tcp),
                service("remote", [remote], tcp, internalTrafficPolicy="Local"))
        a.write("eps.yaml",
                slice_("echo", "echo-1", 4, target, [(p.ip4, True) for p in pods]),
                slice_("remote", "remote-1", 4, target, [(pods[0].ip4, True)],
                       node="node-2"))
        a.start()
        a.wait(lambda f: len(f.get((vip, 80, "TCP"), ())) == 3 and (empty, 80, "TCP") in f
               and (remote, 80, "TCP") in f, "three services")
        yield a
