"""The agent fed by the real `kubernetes` client through the fake API server
(tests/kubeapi.py): what reaches the dataplane across watch events, 410 Gone
relists, API outages and multi-slice services."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from fakes import FakeDataplane, wait
from kubeapi import FakeKubeAPI, endpoint_slice, node, service

from pyagent.core.config import NodeConfig
from pyagent.node.agent import Agent
from pyagent.sources.kube import KubeSource


def endpoints(dp: FakeDataplane, name: str) -> set[str]:
    ports = dp.programmed.get(("default", name), ())
    return {e.ip for sps in ports for e in sps.cluster_endpoints or ()}


@pytest.fixture
def env(tmp_path) -> Iterator[tuple[FakeKubeAPI, Agent, FakeDataplane, KubeSource]]:
    api = FakeKubeAPI().start()
    api.create(node("node-a"))
    api.create(service("default", "a", "10.96.0.1"))
    api.create(endpoint_slice("default", "a-1", "a", ["10.0.0.1"]))
    api.create(endpoint_slice("default", "a-2", "a", ["10.0.0.2"]))
    api.create(service("default", "b", "10.96.0.2"))
    api.create(endpoint_slice("default", "b-1", "b", ["10.0.1.1"]))
    config = dataclasses.replace(NodeConfig(node_name="node-a"), min_sync_period=0.01,
                                 sync_period=3600)
    dp = FakeDataplane()
    agent = Agent(config, dp)
    src = KubeSource(agent.sink, node_name="node-a",
                     kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                     backoff_initial=0.05, backoff_cap=0.2)
    agent.start()
    src.start()
    try:
        yield api, agent, dp, src
    finally:
        src.stop()
        agent.stop()
        api.stop()


def test_initial_sync_then_watch_updates(env) -> None:
    api, agent, dp, _ = env
    wait(lambda: endpoints(dp, "a") == {"10.0.0.1", "10.0.0.2"} and endpoints(dp, "b"))
    assert dp.syncs[0][1] is True  # the first sync is full, after every list
    api.update(endpoint_slice("default", "b-1", "b", ["10.0.1.1", "10.0.1.2"]))
    wait(lambda: endpoints(dp, "b") == {"10.0.1.1", "10.0.1.2"})
    assert set(dp.syncs[-1][0]) == {("default", "b")}  # only b was rewritten


def test_relist_after_410_hands_over_only_what_changed(env) -> None:
    api, agent, dp, src = env
    wait(lambda: endpoints(dp, "b") == {"10.0.1.1"})
    n = len(dp.syncs)
    api.pause()  # changes pile up while the watches are stalled...
    api.update(endpoint_slice("default", "b-1", "b", ["10.0.1.9"]))
    api.compact()  # ...and their resourceVersion is compacted away: 410 Gone
    api.expire_watches()
    api.resume()
    def lists() -> list:
        return [r for r in api.requests if "endpointslices" in r.path and not r.watch]
    # The held-back update may arrive on the watch just before its 410: wait
    # for the relist too (the 410 really forced one).
    wait(lambda: endpoints(dp, "b") == {"10.0.1.9"} and len(lists()) >= 2)
    changed = set().union(*(set(s) for s, _ in dp.syncs[n:]))
    assert changed == {("default", "b")}, changed  # a's unchanged objects: no rewrite


def test_api_outage_keeps_the_datapath_and_catches_up(env) -> None:
    api, agent, dp, _ = env
    wait(lambda: endpoints(dp, "a") == {"10.0.0.1", "10.0.0.2"})
    api.stop()
    time.sleep(0.5)
    assert endpoints(dp, "a") == {"10.0.0.1", "10.0.0.2"} and endpoints(dp, "b")
    api.start()
    api.delete("Service", "default", "b")
    api.update(endpoint_slice("default", "a-2", "a", ["10.0.0.3"]))
    wait(lambda: endpoints(dp, "a") == {"10.0.0.1", "10.0.0.3"}, timeout=15)
    wait(lambda: ("default", "b") not in dp.programmed, timeout=15)


def test_slices_of_one_service_in_several_events_never_empty_it(env) -> None:
    api, agent, dp, _ = env
    wait(lambda: endpoints(dp, "a") == {"10.0.0.1", "10.0.0.2"})
    n = len(dp.syncs)
    api.create(endpoint_slice("default", "a-3", "a", ["10.0.0.3"]))
    api.delete("EndpointSlice", "default", "a-1")
    api.update(endpoint_slice("default", "a-2", "a", ["10.0.0.4"]))
    api.delete("EndpointSlice", "default", "a-2")
    wait(lambda: endpoints(dp, "a") == {"10.0.0.3"})
    for states, _ in dp.syncs[n:]:
        if ("default", "a") in states:
            assert any(sps.cluster_endpoints for sps in states[("default", "a")])
