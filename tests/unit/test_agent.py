"""The agent loop with an in-memory dataplane: what reaches the dataplane,
when, and how /healthz follows it (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import urllib.error
import urllib.request

import pytest
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
    obs.attach(dp)
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


def _slice(name: str, ip: str, trigger: float | None = None) -> dict:
    meta: dict = {"name": name, "namespace": "ns", "labels": {
        "kubernetes.io/service-name": "a"}}
    if trigger is not None:
        from datetime import UTC, datetime

        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time":
                               datetime.fromtimestamp(trigger, UTC).isoformat()}
    return {"kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
            "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}


class Recorder:
    def __init__(self) -> None:
        self.reports: list = []

    def on_queued(self) -> None:
        pass

    def on_sync_failed(self) -> None:
        pass

    def on_synced(self, report) -> None:
        self.reports.append(report)


def test_network_programming_latency_starts_at_the_trigger_time(tmp_path, monkeypatch) -> None:
    """kube-proxy's kubeproxy_network_programming_duration_seconds: from the
    EndpointSlice's last-change-trigger-time to the end of the sync that
    programmed it (not from when the agent queued the change)."""
    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    agent, dp, obs = make(config)
    rec = Recorder()
    agent.observers += (rec,)
    agent.start()
    try:
        for kind in ("Service", "EndpointSlice", "Node"):
            agent.sink.replace(kind, [svc("a", "10.96.0.1")] if kind == "Service" else [])
        wait(lambda: dp.syncs)
        # RFC 3339 with milliseconds, truncated as the API server writes it:
        # rounded, it could lie in the future of a sync under 0.5 ms (the
        # metric clamps a negative latency to 0)
        triggered = math.floor(time.time() * 1000) / 1000
        agent.sink.upsert("EndpointSlice", _slice("a-1", "10.0.0.1", trigger=triggered))
        wait(lambda: any(r.trigger_times for r in rec.reports))
        report = next(r for r in rec.reports if r.trigger_times)
        assert report.trigger_times == (triggered,)
        text = obs.metrics.exposition()[0].decode()
        assert "kubeproxy_network_programming_duration_seconds_count 1.0" in text
        total = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("kubeproxy_network_programming_duration_seconds_sum"))
        assert total == pytest.approx(report.finished - triggered)
        agent.sink.upsert("EndpointSlice", _slice("a-2", "10.0.0.2"))  # no annotation

        def with_a2() -> list:  # reports come after dp.sync; syncs may be merged or extra
            return [r for r in rec.reports if any(
                ep.ip == "10.0.0.2" for sps in r.states.get(("ns", "a"), ())
                for ep in sps.all_endpoints)]
        wait(with_a2)
        assert not with_a2()[0].trigger_times
    finally:
        agent.stop()


def test_pending_counts_the_changes_that_arrived_during_the_sync(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    agent, dp, _ = make(config)
    rec = Recorder()
    agent.observers += (rec,)
    sync = dp.sync
    arrived = []

    def slow_sync(states, full):
        if not arrived:  # a watch event lands while the dataplane works
            arrived.append(True)
            agent.sink.upsert("EndpointSlice", _slice("a-1", "10.0.0.1"))
        return sync(states, full)
    dp.sync = slow_sync  # type: ignore[method-assign]
    agent.start()
    try:
        for kind in ("Service", "EndpointSlice", "Node"):
            agent.sink.replace(kind, [svc("a", "10.96.0.1")] if kind == "Service" else [])
        wait(lambda: rec.reports)
        assert rec.reports[0].pending == (0, 1)  # was always (0, 0)
        wait(lambda: len(rec.reports) >= 2)
        assert rec.reports[1].pending == (0, 0)
    finally:
        agent.stop()


def test_states_prepared_during_setup_are_used_and_never_stale(tmp_path, monkeypatch) -> None:
    """prepare() (run while the BPF compile runs) computes every Service's
    state; the first sync reuses it, except where an object changed since."""
    from pyagent.core import store as store_mod

    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    computed: list[str] = []
    real = store_mod.compute_service_state

    def counting(ports, *args, **kw):  # type: ignore[no-untyped-def]
        computed.append(ports[0].name)
        return real(ports, *args, **kw)

    monkeypatch.setattr(store_mod, "compute_service_state", counting)
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    agent, dp, _ = make(config)
    agent.sink.replace("Service", [svc("a", "10.96.0.1"), svc("b", "10.96.0.2")])
    agent.sink.replace("EndpointSlice", [])
    assert agent.prepare() is False and computed == []  # Nodes not listed yet
    agent.sink.replace("Node", [])
    assert agent.prepare() is True and sorted(computed) == ["a", "b"]
    computed.clear()
    changed = svc("b", "10.96.0.2")
    changed["metadata"]["resourceVersion"] = "2"
    changed["spec"]["ports"][0]["port"] = 81
    agent.sink.upsert("Service", changed)
    agent.start()
    try:
        wait(lambda: dp.syncs)
        assert "a" not in computed  # from prepare(); b changed after it
        assert computed.count("b") == 1
        assert dp.syncs[0][1] is True
        assert {p.service.port for p in dp.programmed[("ns", "b")]} == {81}
    finally:
        agent.stop()


class StagedDataplane(FakeDataplane):
    """setup() returns before the "programs" load; wait_loaded() blocks."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.loaded = threading.Event()
        self.error = error
        self.closed = False

    def wait_loaded(self) -> None:
        assert self.loaded.wait(5)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


def listed(agent: Agent) -> None:
    agent.sink.replace("Service", [svc("a", "10.96.0.1")])
    agent.sink.replace("EndpointSlice", [])
    agent.sink.replace("Node", [])


def test_a_staged_dataplane_syncs_while_its_programs_load(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    dp = StagedDataplane()
    agent = Agent(config, dp)
    starting = threading.Thread(target=agent.start)
    starting.start()
    try:
        listed(agent)
        wait(lambda: dp.syncs)  # the first full sync did not wait for the load
        assert dp.syncs[0][1] is True and starting.is_alive()  # start() waits for it
        dp.loaded.set()
        starting.join(5)
        assert not starting.is_alive()
    finally:
        dp.loaded.set()
        agent.stop()


def test_a_failed_load_fails_the_start_and_stops_syncing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path))
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    dp = StagedDataplane(RuntimeError("verifier says no"))
    agent = Agent(config, dp)
    dp.loaded.set()
    with pytest.raises(RuntimeError, match="verifier"):
        agent.start()
    assert dp.closed and not agent.runner._thread.is_alive()  # type: ignore[union-attr]
    listed(agent)
    time.sleep(0.1)
    assert dp.syncs == []
