"""Hitless restart: SIGKILL the agent while clients hold connections and keep
opening new ones; a new agent adopts the pinned maps and links, keeps every
service and backend id, and writes only what changed while it was away."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import pytest
from agentlab import AgentLab, agent_lab, service, slice_

pytestmark = pytest.mark.root

VIP4, VIP6 = "10.96.0.10", "fd00:96::10"
PORTS = [("http", "TCP", 80), ("dns", "UDP", 53)]
TARGETS = [("http", "TCP", 8080), ("dns", "UDP", 5353)]


@pytest.fixture
def alab() -> Iterator[AgentLab]:
    with agent_lab(4, signal.SIGKILL) as a:
        yield a


def write(a: AgentLab, pods: list[int]) -> None:
    p = a.lab.pods
    a.write("svc.yaml", service("echo", [VIP4, VIP6], PORTS))
    a.write("eps.yaml", slice_("echo", "v4", 4, TARGETS, [(p[i].ip4, True) for i in pods]),
            slice_("echo", "v6", 6, TARGETS, [(p[i].ip6, True) for i in pods]))


def ids(a: AgentLab) -> dict:
    d = a.dump()
    return {(s["frontend"]["address"], s["frontend"]["port"], s["frontend"]["protocol"]):
            (s["revNatId"], {(b["address"], b["port"]): b["backendId"] for b in s["backends"]})
            for s in d["services"]}


def test_sigkill_and_restart_drops_nothing(alab: AgentLab) -> None:
    lab = alab.lab
    write(alab, [0, 1, 2])
    alab.start()
    alab.wait(lambda f: len(f.get((VIP4, 80, "TCP"), ())) == 3, "3 backends")
    before = ids(alab)

    clients = [lab.client_start(VIP4, 80, count=100_000, duration=15, hold=20, timeout=2),
               lab.client_start(VIP6, 80, count=100_000, duration=15, hold=20, timeout=2),
               lab.client_start(VIP4, 53, proto="udp", count=100_000, duration=15, timeout=2)]
    time.sleep(1.5)
    alab.stop(signal.SIGKILL)
    write(alab, [0, 1, 2, 3])  # a change while no agent runs
    time.sleep(1)
    alab.start()
    alab.wait(lambda f: len(f.get((VIP4, 80, "TCP"), ())) == 4, "4 backends after restart")
    assert all(c.poll() is None for c in clients), "clients ended before the restart was done"
    results = [lab.client_result(c) for c in clients]

    for r in results:
        assert r.errors == {}, r.errors  # no failed connect, no reset, no broken held conn
        assert r.total > 100
    assert "pod3" in lab.client(VIP4, 80, count=100).counts  # the change while away

    after = ids(alab)
    for fe, (rev, backends) in before.items():
        assert after[fe][0] == rev, f"{fe} changed its service id"
        for addr, bid in backends.items():
            assert after[fe][1][addr] == bid, f"{fe} {addr} changed its backend id"
    logs = alab.logs()
    assert "adopted existing links" in logs and "adopted 4 frontends" in logs
    # the first sync wrote only pod3: per frontend one backend, one slot, one master
    first = re.findall(r"full sync of \d+ services: (\d+) map operations", logs)
    assert first[-1] == str(4 * 3), logs


def test_incompatible_or_old_version_maps_are_replaced_deliberately(alab: AgentLab) -> None:
    """A pinned map whose layout differs is replaced (loudly), never reused,
    and maps of an older layout version are removed once the new ones serve."""
    import os

    from ebpf import bpffs, libbpf
    from pyagent.dataplanes.ebpf import layout as L

    maps_dir = os.path.join(alab.bpffs, L.MAPS_SUBDIR)
    os.makedirs(maps_dir)
    wrong = L.MAPS["lb4_backends"].pin_path(alab.bpffs)
    old = os.path.join(maps_dir, f"lb4_services_v{L.LAYOUT_VERSION - 1}")
    for path in (wrong, old):
        fd = libbpf.map_create(1, "stale", 4, 4, 4)
        bpffs.pin(fd, path)
        os.close(fd)
    write(alab, [0, 1])
    alab.start()
    alab.wait(lambda f: len(f.get((VIP4, 80, "TCP"), ())) == 2, "2 backends")
    assert set(alab.lab.client(VIP4, 80, count=50).counts) == {"pod0", "pod1"}
    logs = alab.logs()
    assert f"replacing incompatible pinned map {wrong}" in logs
    assert not os.path.exists(old) and "another layout version" in logs
