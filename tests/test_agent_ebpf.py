"""`pyagent run --mode ebpf` end to end: manifests in, real connections through
ClusterIPs out, in a namespace lab with its own cgroup and bpffs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from agentlab import AgentLab, agent_lab, pods_for, service, slice_

pytestmark = pytest.mark.root

VIP4, VIP6 = "10.96.0.10", "fd00:96::10"
PORTS = [("http", "TCP", 80), ("alt", "TCP", 81), ("dns", "UDP", 53)]
TARGETS = [("http", "TCP", 8080), ("alt", "TCP", 9090), ("dns", "UDP", 5353)]


@pytest.fixture
def alab() -> Iterator[AgentLab]:
    with agent_lab(4) as a:
        yield a


def refused(errname: str) -> str:
    """What a refused connect() fails with on this kernel: errname, or EPERM
    where the kernel lacks bpf_set_retval (README, "Kernels")."""
    from pyagent.dataplanes.ebpf import socket_lb

    return errname if socket_lb.kernel_variant().features.set_retval else "EPERM"


def echo_manifests(a: AgentLab, ready: dict[int, bool]) -> None:
    """Service `echo` (dual-stack, 3 ports) with pods `ready` {index: ready?}."""
    pods = a.lab.pods
    a.write("svc.yaml", service("echo", [VIP4, VIP6], PORTS))
    a.write("eps.yaml",
            slice_("echo", "echo-v4", 4, TARGETS, [(pods[i].ip4, r) for i, r in ready.items()]),
            slice_("echo", "echo-v6", 6, TARGETS, [(pods[i].ip6, r) for i, r in ready.items()]))


def wait_backends(a: AgentLab, n: int) -> None:
    a.wait(lambda f: all(len(f.get((vip, 80, "TCP"), ())) == n for vip in (VIP4, VIP6)),
           f"{n} backends on echo")


def test_every_ready_backend_and_nothing_else(alab: AgentLab) -> None:
    lab = alab.lab
    echo_manifests(alab, {0: True, 1: True, 2: True, 3: False})
    alab.start()
    wait_backends(alab, 3)
    ready = {p.name for p in lab.pods[:3]}
    for vip in (VIP4, VIP6):
        for port, proto in ((80, "tcp"), (81, "tcp"), (53, "udp")):
            res = lab.client(vip, port, proto=proto, count=300)
            assert not res.errors, (vip, port, res.errors)
            assert set(res.counts) == ready, (vip, port, res.counts)
            assert res.total == 300
            # the application sees the VIP as its peer, never the backend
            if proto == "tcp":
                assert {d["peer"] for d in res.details} == {vip}


def test_udp_socket_sticks_to_one_backend_and_sees_the_vip(alab: AgentLab) -> None:
    lab = alab.lab
    echo_manifests(alab, {0: True, 1: True, 2: True})
    alab.start()
    wait_backends(alab, 3)
    for vip in (VIP4, VIP6):
        for connected in (True, False):
            res = lab.client(vip, 53, proto="udp", count=30, messages=10, connected=connected)
            assert not res.errors
            for d in res.details:
                assert len(set(d["pods"])) == 1, d  # one socket, one backend
                assert set(d["from"]) == {vip}  # recvfrom() reports the VIP
                if connected:
                    assert d["peer"] == vip  # getpeername() too
            assert len(res.counts) > 1  # different sockets do spread


def test_no_endpoints_is_refused_at_once(alab: AgentLab) -> None:
    lab = alab.lab
    alab.write("svc.yaml", service("empty", [VIP4, VIP6], PORTS))
    alab.start()
    alab.wait(lambda f: (VIP4, 80, "TCP") in f and (VIP6, 53, "UDP") in f, "empty service")
    for vip in (VIP4, VIP6):
        for port, proto in ((80, "tcp"), (53, "udp")):
            # a 5 s client timeout: ETIMEDOUT here would mean a silent drop
            res = lab.client(vip, port, proto=proto, count=5, timeout=5)
            assert res.errors == {refused("ECONNREFUSED"): 5}, (vip, port, res.errors)


def test_manifest_changes_apply_without_restart(alab: AgentLab) -> None:
    lab = alab.lab
    echo_manifests(alab, {0: True, 1: True})
    alab.start()
    wait_backends(alab, 2)
    assert set(lab.client(VIP4, 80, count=100).counts) == {"pod0", "pod1"}

    echo_manifests(alab, {0: True, 1: True, 2: True})  # add a backend
    wait_backends(alab, 3)
    assert set(lab.client(VIP4, 80, count=200).counts) == {"pod0", "pod1", "pod2"}

    echo_manifests(alab, {1: True, 2: True})  # remove one
    wait_backends(alab, 2)
    for vip in (VIP4, VIP6):
        res = lab.client(vip, 80, count=200)
        assert set(res.counts) == {"pod1", "pod2"} and not res.errors

    alab.remove("svc.yaml")  # delete the service
    alab.wait(lambda f: not f, "service gone")
    res = lab.client(VIP4, 80, count=3, timeout=1)
    assert not res.counts  # no longer translated: nothing answers at the VIP


def test_bad_manifests_are_reported_and_the_rest_is_served(alab: AgentLab) -> None:
    lab = alab.lab
    echo_manifests(alab, {0: True, 1: True})
    good2 = service("good2", ["10.96.0.20"], [("http", "TCP", 80)])
    alab.write("good2.yaml", good2, slice_("good2", "good2", 4, [("http", "TCP", 8080)],
                                           [(lab.pods[2].ip4, True)]))
    alab.write_raw("broken.yaml", "kind: Service\nmetadata: {name: x\n  - [\n")
    alab.write("bad.yaml",
               service("bad-ip", ["10.96.0.999"], [("http", "TCP", 80)]),
               service("bad-port0", ["10.96.0.31"], [("http", "TCP", 0)]),
               service("bad-port-big", ["10.96.0.32"], [("http", "TCP", 70000)]),
               service("bad-proto", ["10.96.0.33"], [("http", "FOO", 80)]))
    alab.start()
    fes = alab.wait(lambda f: ("10.96.0.20", 80, "TCP") in f and (VIP4, 80, "TCP") in f,
                    "good services")
    assert not any(vip.startswith("10.96.0.3") or vip == "10.96.0.999" for vip, _, _ in fes)
    logs = alab.logs()
    for name in ("broken.yaml", "bad-ip", "bad-port0", "bad-port-big", "bad-proto"):
        assert name in logs, f"{name} not reported:\n{logs}"
    assert lab.client("10.96.0.20", 80, count=20).counts == {"pod2": 20}

    # A bad update of a good Service keeps its last good state.
    bad_update = good2 | {"spec": good2["spec"] | {
        "ports": [{"name": "http", "protocol": "TCP", "port": 99999}]}}
    alab.write("good2.yaml", bad_update, slice_("good2", "good2", 4, [("http", "TCP", 8080)],
                                                [(lab.pods[2].ip4, True)]))
    alab.wait(lambda f: alab.logs().count("good2") > logs.count("good2"), "error for good2")
    assert lab.client("10.96.0.20", 80, count=20).counts == {"pod2": 20}
    assert alab.proc is not None and alab.proc.poll() is None


def test_dump_after_exit_then_cleanup_leaves_nothing(alab: AgentLab) -> None:
    lab = alab.lab
    echo_manifests(alab, {0: True, 1: True, 2: True})
    alab.start()
    wait_backends(alab, 3)
    assert alab.stop() == 0
    # The agent is gone; the kernel keeps serving, and the dump still decodes.
    fes = alab.frontends()
    assert fes[(VIP4, 80, "TCP")] == sorted(f"{p.ip4}:8080" for p in lab.pods[:3])
    assert pods_for(lab, (b.split(":")[0] for b in fes[(VIP4, 80, "TCP")])) == {
        "pod0", "pod1", "pod2"}
    assert set(lab.client(VIP4, 80, count=60).counts) == {"pod0", "pod1", "pod2"}

    res = alab.pyagent("cleanup", "--bpffs", alab.bpffs, "--cgroup", str(lab.cgroup))
    assert res.returncode == 0, res.stderr
    show = subprocess.run(["bpftool", "cgroup", "show", str(lab.cgroup)], capture_output=True,
                          text=True)
    assert show.stdout.strip() == "", show.stdout
    leftovers = list(lab.bpffs.glob("pyagent*"))
    assert leftovers == [], leftovers
    assert lab.client(VIP4, 80, count=3, timeout=1).counts == {}
    again = alab.pyagent("cleanup", "--bpffs", alab.bpffs, "--cgroup", str(lab.cgroup))
    assert again.returncode == 0 and "nothing" in again.stdout, again.stdout


def test_kube_proxy_selection_drives_the_socket_path(alab: AgentLab) -> None:
    """iTP=Local, the serving-terminating fallback and topology hints decide
    which pods a ClusterIP reaches (the same selection `plan` prints)."""
    from agentlab import endpoint

    lab = alab.lab
    p = lab.pods
    tcp = [("http", "TCP", 80)]
    tgt = [("http", "TCP", 8080)]
    alab.write("node.yaml", {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
    alab.write("local.yaml",
               service("local", ["10.96.1.1"], tcp, internalTrafficPolicy="Local"),
               slice_("local", "local", 4, tgt, [endpoint(p[0].ip4), endpoint(p[1].ip4),
                                                 endpoint(p[2].ip4, node="node-2")]),
               service("remote-only", ["10.96.1.2"], tcp, internalTrafficPolicy="Local"),
               slice_("remote-only", "remote-only", 4, tgt,
                      [endpoint(p[2].ip4, node="node-2")]))
    alab.write("term.yaml",
               service("term", ["10.96.1.3"], tcp),
               slice_("term", "term", 4, tgt, [
                   endpoint(p[0].ip4, ready=False, serving=True, terminating=True),
                   endpoint(p[1].ip4, ready=False, serving=False, terminating=True),
                   endpoint(p[3].ip4, ready=False, serving=True, terminating=True)]),
               service("zoned", ["10.96.1.4"], tcp),
               slice_("zoned", "zoned", 4, tgt, [
                   endpoint(p[0].ip4, zones=["zone-b"]), endpoint(p[1].ip4, zones=["zone-a"]),
                   endpoint(p[2].ip4, zones=["zone-a"])]))
    alab.start()
    alab.wait(lambda f: all((f"10.96.1.{i}", 80, "TCP") in f for i in range(1, 5)), "services")

    assert set(lab.client("10.96.1.1", 80, count=100).counts) == {"pod0", "pod1"}
    # endpoints exist, none local: dropped (at once, see the README), not refused
    res = lab.client("10.96.1.2", 80, count=3, timeout=5)
    assert res.errors == {refused("ETIMEDOUT"): 3}
    assert set(lab.client("10.96.1.3", 80, count=100).counts) == {"pod0", "pod3"}
    assert set(lab.client("10.96.1.4", 80, count=100).counts) == {"pod1", "pod2"}
