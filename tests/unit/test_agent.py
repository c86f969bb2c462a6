"""The agent loop with an in-memory dataplane: what reaches the dataplane,
when, and how /healthz follows it (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request

from fakes import FakeDataplane, wait

from pyagent.core.config import NodeConfig
from pyagent.node.agent import Agent
from pyagent.observe.observability import Observability


def svc(name: str, ip: str) -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns",
                                            "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}}


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            json.loads(r.read())
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def make(config: NodeConfig) -> tuple[Agent, FakeDataplane, Observability]:
    dp = FakeDataplane()
    obs = Observability(config)
    agent = Agent(config, dp, observers=[obs])
    obs.attach(agent)
    return agent, dp, obs


def test_nothing_is_synced_before_every_kind_is_listed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    agent, dp, _ = make(config)
    agent.start()
    try:
        agent.sink.replace("Service", [svc("a", "10.96.0.1")])
        agent.sink.replace("EndpointSlice", [])
        time.sleep(0.2)
        assert dp.syncs == []  # Nodes not listed yet: no partial view reaches the kernel
        agent.sink.replace("Node", [])
        wait(lambda: dp.syncs)
        assert dp.syncs[0][1] is True and ("ns", "a") in dp.programmed
        agent.sink.upsert("Service", svc("b", "10.96.0.2"))
        wait(lambda: ("ns", "b") in dp.programmed)
        # incremental: only b was handed over
        assert list(dp.syncs[-1][0]) == [("ns", "b")] and dp.syncs[-1][1] is False
        agent.sink.delete("Service", svc("a", "10.96.0.1"))
        wait(lambda: ("ns", "a") not in dp.programmed)
    finally:
        agent.stop()


def test_healthz_turns_503_while_updates_cannot_be_applied(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    config = dataclasses.replace(
        NodeConfig(node_name="n"), min_sync_period=0.01, sync_period=0.5,
        healthz_bind_address="127.0.0.1:0", metrics_bind_address="127.0.0.1:0",
        bpffs=str(tmp_path / "bpffs"))
    agent, dp, obs = make(config)
    agent.start()
    obs.start()
    try:
        for kind in ("Service", "EndpointSlice", "Node"):
            agent.sink.replace(kind, [])
        wait(lambda: dp.syncs)
        assert healthz(obs.healthz_port) == 200
        dp.broken = True
        agent.sink.upsert("Service", svc("a", "10.96.0.1"))
        # health timeout is 2 x syncPeriod = 1 s: queued but never applied
        wait(lambda: healthz(obs.healthz_port) == 503, timeout=5)
        dp.broken = False  # the runner's retry (a full sync) applies it
        wait(lambda: ("ns", "a") in dp.programmed, timeout=10)
        wait(lambda: healthz(obs.healthz_port) == 200)
    finally:
        agent.stop()
        obs.stop()
