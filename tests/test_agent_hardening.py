"""The agent under the rules of issue 12, end to end in a namespace lab: the
UDP janitor touches only sockets the socket LB translated, map sizes are
configurable and a full map refuses whole Services (counted, listed, named),
the health server holds no thread per connection, the status file is
private, and `maps dump` decodes consistently under a concurrent writer."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from agentlab import AgentLab, agent_lab, service, slice_

from pyagent.lab import Lab
from pyagent.observe import statusfile

pytestmark = pytest.mark.root

VIP = "10.96.0.10"
DNS = [("dns", "UDP", 53)]


@pytest.fixture
def alab() -> Iterator[AgentLab]:
    with agent_lab(3) as a:
        yield a


def follower(lab: Lab, dst: str, port: int, seconds: float, ns: str | None = None,
             in_cgroup: bool = True) -> subprocess.Popen:
    """A resolver-like client: one connected UDP socket queried every 20 ms,
    reconnecting on errors (pyagent.lab.client --follow)."""
    cmd = [sys.executable, "-m", "pyagent.lab.client", "--dst", dst, "--port", str(port),
           "--proto", "udp", "--follow", str(seconds), "--timeout", "1"]
    return lab.popen(cmd, ns, in_cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)


def test_udp_janitor_destroys_only_sockets_it_translated(alab: AgentLab) -> None:
    """pod0 leaves the Service: the socket the LB sent there is destroyed and
    reconnects to pod1; sockets connected to pod0's address directly (in
    the agent's cgroup, outside it, in another namespace) never went
    through the socket LB and keep working."""
    lab = alab.lab
    pod0 = lab.pods[0]

    def endpoints(pods: list[int]) -> None:
        alab.write("svc.yaml", service("dns", [VIP], DNS),
                   slice_("dns", "dns", 4, [("dns", "UDP", 5353)],
                          [(lab.pods[i].ip4, True) for i in pods]))

    endpoints([0])
    alab.start()
    alab.wait(lambda f: len(f.get((VIP, 53, "UDP"), ())) == 1, "1 backend")
    translated = follower(lab, VIP, 53, 8)
    bystanders = {
        "direct, in the cgroup": follower(lab, pod0.ip4, 5353, 8),
        "direct, outside the cgroup": follower(lab, pod0.ip4, 5353, 8, in_cgroup=False),
        "another namespace, outside the cgroup": follower(lab, pod0.ip4, 5353, 8,
                                                          ns=lab.pods[2].ns, in_cgroup=False),
    }
    time.sleep(2)
    endpoints([1])  # pod0 leaves the Service, its server keeps running
    res = lab.client_result(translated)
    # destroyed once: a blocked recv() sees ECONNABORTED, a send() between
    # queries EDESTADDRREQ (the kernel disconnected the socket)
    assert sum(res.errors.values()) == 1, res.errors
    assert set(res.errors) <= {"ECONNABORTED", "EDESTADDRREQ"}, res.errors
    events = res.details
    assert events[0]["pod"] == "pod0" and events[-1]["pod"] == "pod1"
    for what, proc in bystanders.items():
        r = lab.client_result(proc)
        print(f"PROBE | UDP janitor bystander ({what}) | {r.total + sum(r.errors.values())} | "
              f"{r.total} | {sum(r.errors.values())} queries")
        assert r.errors == {}, (what, r.errors)  # never destroyed
        assert set(r.counts) == {"pod0"}, (what, r.counts)
    assert "1 connected UDP sockets destroyed" in alab.logs()


def _status(alab: AgentLab) -> dict:
    res = alab.pyagent("status", "--bpffs", alab.bpffs, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _metrics(alab: AgentLab) -> str:
    port = statusfile.read(alab.bpffs)["metricsPort"]
    code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    return alab.lab.run([sys.executable, "-c", code], in_cgroup=False).stdout


def test_small_maps_refuse_whole_services_oldest_first(alab: AgentLab) -> None:
    """--bpf-lb-map-max 8: eight services-map entries. Three older one-port
    Services (a master and a slot each) fit; a newer two-port Service needs
    four and is refused whole (no port served) although its name sorts
    first: counted per reason, listed in status, named in the error. One
    more small Service fills the map: pressure exactly 1.0. Deleting the
    refused one leaves nothing; a restart with other sizes replaces the
    pinned maps loudly."""
    lab = alab.lab
    eps = [(lab.pods[0].ip4, True)]
    tcp = [("http", "TCP", 80)]

    def svc(name: str, vip: str, ports: list, created: str) -> list[dict]:
        s = service(name, [vip], ports)
        s["metadata"]["creationTimestamp"] = created
        return [s, slice_(name, name, 4, [(p[0], p[1], 8080) for p in ports], eps)]

    alab.write("old.yaml", *svc("zz-old-1", "10.96.0.1", tcp, "2020-01-01T00:00:00Z"),
               *svc("zz-old-2", "10.96.0.2", tcp, "2020-01-02T00:00:00Z"),
               *svc("zz-old-3", "10.96.0.3", tcp, "2020-01-03T00:00:00Z"))
    alab.write("new.yaml", *svc("aa-new", "10.96.0.9", [("a", "TCP", 80), ("b", "TCP", 81)],
                                "2024-01-01T00:00:00Z"))
    alab.start("--bpf-lb-map-max", "8")
    alab.wait(lambda f: len(f) == 3, "the three older Services")
    time.sleep(1)
    fes = alab.frontends()
    assert not any(k[0] == "10.96.0.9" for k in fes), fes  # not one port of it
    assert lab.client("10.96.0.9", 80, count=3, timeout=0.5).total == 0
    assert lab.client("10.96.0.1", 80, count=3).counts == {"pod0": 3}
    st = _status(alab)
    [refused] = st["refused"]
    assert refused["service"] == "default/aa-new" and refused["reason"] == "map_full"
    assert refused["map"] == "lb4_services"
    assert refused["message"] == ("lb4_services full: 6 of 8 entries in use, "
                                  "this Service needs 4 more")
    assert st["maps"]["lb4_services"]["maxEntries"] == 8
    text = _metrics(alab)
    assert 'pyagent_services_refused{map="lb4_services",reason="map_full"} 1.0' in text
    status_text = alab.pyagent("status", "--bpffs", alab.bpffs).stdout
    assert "default/aa-new" in status_text and "lb4_services full" in status_text
    alab.write("fill.yaml", *svc("zz-old-4", "10.96.0.4", tcp, "2020-01-04T00:00:00Z"))
    alab.wait(lambda f: len(f) == 4, "the fourth Service")
    time.sleep(0.5)
    assert 'pyagent_bpf_map_pressure{map_name="lb4_services"} 1.0' in _metrics(alab)
    # deleted while refused: nothing of it anywhere, and no longer listed
    alab.remove("new.yaml")
    deadline = time.monotonic() + 15
    while _status(alab)["refused"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _status(alab)["refused"] == []
    assert len(alab.dump()["revNat"]) == 4
    # other sizes: the pins are replaced (loudly), the Services written anew
    alab.stop()
    alab.start("--bpf-lb-map-max", "16")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            alab.dump().get("maps", {}).get("lb4_services", {}).get("maxEntries") == 16
            and len(alab.frontends()) == 4):
        time.sleep(0.2)
    assert "replacing incompatible pinned map" in alab.logs()
    assert "max_entries 8, configured 16" in alab.logs()
    assert alab.dump()["maps"]["lb4_services"]["maxEntries"] == 16


def test_healthz_holds_no_thread_per_connection(alab: AgentLab) -> None:
    alab.write("svc.yaml", service("dns", [VIP], DNS))
    alab.start()
    alab.wait(lambda f: (VIP, 53, "UDP") in f, "the Service")
    pid = statusfile.read(alab.bpffs)["pid"]
    port = statusfile.read(alab.bpffs)["healthzPort"]

    def threads() -> int:
        with open(f"/proc/{pid}/status") as f:
            return int(next(ln for ln in f if ln.startswith("Threads:")).split()[1])
    before = threads()
    code = f"""
import socket, sys, time, urllib.request
held = [socket.create_connection(("127.0.0.1", {port}), timeout=5) for _ in range(1000)]
time.sleep(1)
print("held", flush=True)
sys.stdin.readline()
r = urllib.request.urlopen("http://127.0.0.1:{port}/healthz", timeout=5)
print(r.status, flush=True)
"""
    proc = alab.lab.popen([sys.executable, "-c", code], in_cgroup=False, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    during = threads()
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "200"  # /healthz answers meanwhile
    proc.wait(timeout=30)
    assert during <= before + 1, (before, during)  # (the janitor may come and go)


def test_status_file_is_private(alab: AgentLab) -> None:
    alab.write("svc.yaml", service("dns", [VIP], DNS))
    alab.start()
    alab.wait(lambda f: (VIP, 53, "UDP") in f, "the Service")
    path = statusfile.path_for(alab.bpffs)
    mode = os.stat(path)
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0


def test_maps_dump_under_a_concurrent_writer_never_shows_none(tmp_path) -> None:
    """A writer grows and shrinks Services while `maps dump` reads: every
    slot decodes with the same fields and types, a slot whose backend is
    not (or no longer) there is marked as such."""
    from ebpf import bpffs as fs
    from pyagent.dataplanes.ebpf import socket_lb
    from pyagent.dataplanes.ebpf.dump import dump
    from pyagent.dataplanes.ebpf.frontends import Backend, Frontend
    from pyagent.dataplanes.ebpf.kernel import KernelWriter
    from pyagent.dataplanes.ebpf.reconciler import Reconciler

    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
    try:
        bpffs = str(mnt / "pyagent")
        fs.ensure(bpffs)
        lb = socket_lb.load(bpffs)
        r = Reconciler(KernelWriter(lb.maps))
        stop = threading.Event()
        backends = [Backend(f"10.0.{i // 200}.{i % 200 + 1}", 8080, 6) for i in range(400)]

        def write() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                r.apply({("ns", f"s{i}"): [Frontend(
                    f"10.96.0.{i + 1}", 80, 6, 1, 1,
                    tuple(backends[(n * 7 + i) % 300:(n * 7 + i) % 300 + 1 + (n % 50)]))]
                    for i in range(20)})
        t = threading.Thread(target=write, daemon=True)
        t.start()
        seen_states: set[str] = set()
        try:
            for _ in range(150):
                for s in dump(bpffs)["services"]:
                    for b in s["backends"]:
                        assert isinstance(b["address"], str) and isinstance(b["port"], int)
                        assert isinstance(b["backendId"], int), b
                        seen_states.add(b["state"])
                        if b["state"] in ("slot-missing", "backend-missing"):
                            assert b["address"] == "" and b["port"] == 0
                        else:
                            assert b["address"] and b["port"] == 8080
        finally:
            stop.set()
            t.join(10)
            lb.close()
        assert "active" in seen_states
    finally:
        subprocess.run(["umount", str(mnt)], check=False)  # the pins go with the mount


def test_udp_janitor_searches_only_the_cgroups_namespaces(tmp_path) -> None:
    """cgroup_namespaces lists the network namespaces of the processes in a
    cgroup tree and of nothing else."""
    from pyagent.dataplanes.ebpf.sockets import cgroup_namespaces

    with Lab(pods=2) as lab:
        inside = lab.popen(["sleep", "30"], lab.pods[0].ns)
        child = lab.cgroup / "child"
        child.mkdir()
        nested = subprocess.Popen(
            ["ip", "netns", "exec", lab.pods[1].ns, "sleep", "30"],
            preexec_fn=lambda: (child / "cgroup.procs").write_text("0"))
        try:
            time.sleep(0.5)
            found = {os.stat(p).st_ino for p in cgroup_namespaces(str(lab.cgroup))}
            want = {os.stat(f"/run/netns/{lab.pods[i].ns}").st_ino for i in (0, 1)}
            assert found == want
            assert os.stat("/proc/self/ns/net").st_ino not in found
        finally:
            nested.kill()
            nested.wait()
            inside.kill()
            for _ in range(50):
                try:
                    child.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)

