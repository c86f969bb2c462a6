"""Session affinity and the backend-choice algorithms on the socket path, with
real connections through the agent (issue [affinity], socket half)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from agentlab import AgentLab, agent_lab, service, slice_

pytestmark = pytest.mark.root

VIP = "10.96.0.10"
PORTS = [("http", "TCP", 80)]
TARGETS = [("http", "TCP", 8080)]


@pytest.fixture
def alab() -> Iterator[AgentLab]:
    with agent_lab(3) as a:
        yield a


def write(a: AgentLab, pods: list[int], affinity: int | None = None,
          algorithm: str | None = None) -> None:
    spec: dict = {}
    if affinity is not None:
        spec = {"sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": affinity}}}
    svc = service("echo", [VIP], PORTS, **spec)
    if algorithm:
        svc["metadata"]["annotations"] = {"pyagent.io/lb-algorithm": algorithm}
    a.write("svc.yaml", svc, slice_("echo", "echo", 4, TARGETS,
                                    [(a.lab.pods[i].ip4, True) for i in pods]))


def flags(a: AgentLab) -> list[str]:
    return next((s["flags"] + [s["algorithm"]] for s in a.dump()["services"]
                 if s["frontend"]["address"] == VIP), [])


def test_client_ip_affinity_sticks_expires_and_switches_off(alab: AgentLab) -> None:
    lab = alab.lab
    write(alab, [0, 1, 2], affinity=2)
    alab.start()
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 3, "3 backends")
    res = lab.client(VIP, 80, count=200)
    assert res.total == 200 and len(res.counts) == 1, res.counts  # one client, one backend

    # after the timeout a new choice is made (and sticks again): over several
    # expiries more than one backend gets chosen
    chosen = set()
    for _ in range(8):
        time.sleep(2.5)
        r = lab.client(VIP, 80, count=5)
        assert len(r.counts) == 1, r.counts
        chosen |= set(r.counts)
    assert len(chosen) > 1, chosen

    write(alab, [0, 1, 2])  # affinity off, live
    alab.wait(lambda f: "AFFINITY" not in flags(alab), "affinity off")
    assert set(lab.client(VIP, 80, count=200).counts) == {"pod0", "pod1", "pod2"}


def test_affinity_to_a_backend_that_left_is_ignored(alab: AgentLab) -> None:
    lab = alab.lab
    write(alab, [0, 1, 2], affinity=300)
    alab.start()
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 3, "3 backends")
    [first] = lab.client(VIP, 80, count=20).counts
    rest = [i for i, p in enumerate(lab.pods) if p.name != first]
    write(alab, rest, affinity=300)
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 2, "2 backends")
    res = lab.client(VIP, 80, count=50)
    assert not res.errors and len(res.counts) == 1 and first not in res.counts


def test_round_robin_is_even(alab: AgentLab) -> None:
    lab = alab.lab
    write(alab, [0, 1, 2], algorithm="round-robin")
    alab.start()
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 3, "3 backends")
    assert "round_robin" in flags(alab)
    counts = lab.client(VIP, 80, count=1000).counts
    assert set(counts) == {"pod0", "pod1", "pod2"}
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts


def test_least_conn_avoids_the_backend_holding_connections(alab: AgentLab) -> None:
    lab = alab.lab
    write(alab, [0], algorithm="least-conn")
    alab.start()
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 1, "1 backend")
    holder = lab.client_start(VIP, 80, count=0, hold=10, linger=60)
    assert holder.stderr is not None and holder.stderr.readline().strip() == "held"
    write(alab, [0, 1, 2], algorithm="least-conn")
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 3, "3 backends")
    # short connections close again, so pod1 and pod2 stay below pod0's 10
    res = lab.client(VIP, 80, count=100)
    assert set(res.counts) == {"pod1", "pod2"}, res.counts
    holder.kill()
    holder.wait()
    time.sleep(0.5)  # sock_release gives pod0's connections back
    assert "pod0" in lab.client(VIP, 80, count=100).counts


def test_connected_udp_client_recovers_at_once_when_its_backend_is_deleted(
        alab: AgentLab) -> None:
    """The deleted backend's connected UDP sockets are destroyed (ECONNABORTED),
    so a resolver-style client reconnects through the VIP instead of timing out."""
    lab = alab.lab
    dns = [("dns", "UDP", 53)]
    a = alab

    def endpoints(pods: list[int]) -> None:
        a.write("svc.yaml", service("dns", [VIP], dns),
                slice_("dns", "dns", 4, [("dns", "UDP", 5353)],
                       [(lab.pods[i].ip4, True) for i in pods]))

    endpoints([0])
    a.start()
    a.wait(lambda f: len(f.get((VIP, 53, "UDP"), ())) == 1, "1 backend")
    client = lab.client_start(VIP, 53, proto="udp", follow=8, timeout=2)
    time.sleep(2)
    endpoints([1, 2])
    lab.delete_pod(lab.pods[0])
    res = lab.client_result(client)
    events = res.details
    assert events[0].get("pod") == "pod0"
    first_new = next(i for i, e in enumerate(events) if e.get("pod") in ("pod1", "pod2"))
    gap = events[:first_new]
    # Destroyed, not left hanging: ECONNABORTED when the client was waiting
    # for the reply, EDESTADDRREQ when its next send came first.
    assert {"ECONNABORTED", "EDESTADDRREQ"} & set(res.errors), res.errors
    assert not any(e.get("error") == "ETIMEDOUT" for e in gap), gap[-5:]
    assert all(e.get("pod") in ("pod1", "pod2") for e in events[first_new:])


def test_rolling_update_drops_no_connection(alab: AgentLab) -> None:
    """Pods are replaced one by one (new pod ready, old pod terminating, then
    gone from the slice) while clients keep connecting and hold connections:
    no connection fails, terminating pods get no new ones while ready ones exist."""
    from agentlab import endpoint

    lab = alab.lab
    for i in range(3, 6):
        lab.add_pod(f"pod{i}")
    state = {0: "ready", 1: "ready", 2: "ready"}

    def write_state() -> None:
        eps = [endpoint(lab.pods[i].ip4, ready=s == "ready", serving=True,
                        terminating=s == "terminating") for i, s in sorted(state.items())]
        alab.write("svc.yaml", service("echo", [VIP], PORTS),
                   slice_("echo", "echo", 4, TARGETS, eps))

    write_state()
    alab.start()
    alab.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 3, "3 backends")
    clients = [lab.client_start(VIP, 80, count=100_000, duration=14, hold=10, timeout=3)
               for _ in range(2)]
    for old, new in ((0, 3), (1, 4), (2, 5)):
        time.sleep(1)
        state[new] = "ready"
        state[old] = "terminating"
        write_state()
        alab.wait(lambda f, n=new: f"{lab.pods[n].ip4}:8080" in f.get((VIP, 80, "TCP"), ()),
                  f"pod{new} active")
        probe = lab.client(VIP, 80, count=30)
        assert f"pod{old}" not in probe.counts, probe.counts  # draining: no new connections
        time.sleep(1)
        del state[old]  # terminated: gone from the slice
        write_state()
    results = [lab.client_result(c, timeout=60) for c in clients]
    for r in results:
        assert r.errors == {}, r.errors  # no failed connect, no broken held connection
        assert sum(r.held.values()) == 10
    assert set(lab.client(VIP, 80, count=60).counts) == {"pod3", "pod4", "pod5"}
