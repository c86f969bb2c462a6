"""`pyagent monitor` against real connections: an agent in a namespace lab
(own cgroup, netns and bpffs), a monitor on its pinned maps, and clients
whose every connect() must show up as the decision the kernel made."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from agentlab import VERDICT_VIPS, AgentLab, verdict_lab

pytestmark = pytest.mark.root

VIP, EMPTY, REMOTE = VERDICT_VIPS


@pytest.fixture
def alab() -> Iterator[AgentLab]:
    with verdict_lab() as a:
        yield a


def start_monitor(a: AgentLab, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pyagent", "monitor", "--bpffs", a.bpffs,
                             "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening ..." once its bit is set
    assert line.startswith("listening"), line + proc.stderr.read()
    return proc


def events_of(proc: subprocess.Popen, timeout: float = 60) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def mask(a: AgentLab) -> int:
    from pyagent.dataplanes.ebpf import events

    info = events.listeners(a.bpffs)
    return len(info.live) + len(info.stale)


def test_each_connection_shows_the_backend_it_reached(alab: AgentLab) -> None:
    lab, n = alab.lab, 30
    by_ip = {p.ip4: p.name for p in lab.pods}
    mon = start_monitor(alab, "--service", "default/echo", "--count", str(n))
    res = lab.client(VIP, 80, count=n)
    assert not res.errors and res.total == n
    evs = events_of(mon)
    assert len(evs) == n
    # the i-th decision is the i-th connection: same backend, every time
    assert [by_ip[e["backend"]["address"]] for e in evs] == [d["pod"] for d in res.details]
    for e in evs:
        assert e["verdict"] == "translated" and e["origin"] == "socket"
        assert e["frontend"] == {"address": VIP, "port": 80}
        assert e["service"] == "default/echo:http" and e["backend"]["port"] == 8080
        assert e["client"]["netnsCookie"] > 0
    assert len({d["pod"] for d in res.details}) > 1  # spread, so the match means something
    assert mask(alab) == 0  # the monitor's exit switched events off


def test_reject_and_drop_verdicts(alab: AgentLab) -> None:
    lab = alab.lab
    mon = start_monitor(alab, "--verdict", "reject", "--verdict", "drop", "--count", "6")
    for vip in (EMPTY, REMOTE):
        res = lab.client(vip, 80, count=3, timeout=5)
        assert sum(res.errors.values()) == 3, res.errors
    lab.client(VIP, 80, count=3)  # translated: filtered out
    evs = events_of(mon)
    assert [(e["frontend"]["address"], e["verdict"], e["backend"]) for e in evs] == \
        [(EMPTY, "reject", None)] * 3 + [(REMOTE, "drop", None)] * 3


def test_two_monitors_each_see_everything_and_a_killed_one_is_reclaimed(
        alab: AgentLab) -> None:
    lab = alab.lab
    first = start_monitor(alab, "--count", "5")
    second = start_monitor(alab, "--count", "5", "--backend", lab.pods[0].ip4,
                           "--backend", lab.pods[1].ip4, "--backend", lab.pods[2].ip4)
    assert mask(alab) == 2
    lab.client(VIP, 80, count=5)
    a, b = events_of(first), events_of(second)
    assert len(a) == len(b) == 5
    assert [e["backend"] for e in a] == [e["backend"] for e in b]
    assert mask(alab) == 0

    killed = start_monitor(alab)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    from pyagent.dataplanes.ebpf import events

    assert events.listeners(alab.bpffs).stale  # its slot outlived it...
    after = start_monitor(alab, "--count", "1")  # ...until the next monitor prunes it
    assert mask(alab) == 1
    lab.client(VIP, 80, count=1)
    assert len(events_of(after)) == 1
    assert mask(alab) == 0
