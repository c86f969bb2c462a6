"""Kubernetes Events on refused Services, through the real `kubernetes`
client against the fake API server: one Warning Event per refusal, none
repeated while it lasts, a new one when a fixed Service breaks again."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from fakes import FakeDataplane, wait
from kubeapi import FakeKubeAPI, endpoint_slice, node, service

from pyagent.core.config import NodeConfig
from pyagent.node.agent import Agent
from pyagent.node.wiring import EventsObserver
from pyagent.observe import statusfile
from pyagent.observe.observability import Observability
from pyagent.sources.kube import KubeSource, make_api_client
from pyagent.sources.kube_events import REASON, RefusedServiceEvents


@pytest.fixture
def env(tmp_path) -> Iterator[tuple[FakeKubeAPI, Agent]]:
    api = FakeKubeAPI().start()
    api.create(node("node-a"))
    api.create(service("default", "good", "10.96.0.1"))
    api.create(endpoint_slice("default", "good-1", "good", ["10.0.0.1"]))
    api.create(service("shop", "bad", "not-an-ip"))
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    config = dataclasses.replace(NodeConfig(node_name="node-a"), min_sync_period=0.01,
                                 sync_period=3600, bpffs=str(tmp_path / "bpffs"),
                                 healthz_bind_address="", metrics_bind_address="")
    client = make_api_client(kubeconfig)
    events = RefusedServiceEvents(client, "node-a")
    obs = Observability(config)
    dataplane = FakeDataplane()
    agent = Agent(config, dataplane, observers=[obs, EventsObserver(events.update)])
    obs.attach(dataplane)
    src = KubeSource(agent.sink, node_name="node-a", kubeconfig=kubeconfig,
                     backoff_initial=0.05, backoff_cap=0.2)
    agent.start()
    src.start()
    try:
        yield api, agent
    finally:
        src.stop()
        agent.stop()
        obs.stop()
        events.stop()
        client.close()
        api.stop()
        statusfile.remove(config.bpffs)


def refusals(api: FakeKubeAPI) -> list[dict]:
    return [e for e in api.events if e["reason"] == REASON]


def test_refused_service_gets_one_event(env) -> None:
    api, agent = env
    wait(lambda: len(refusals(api)) == 1)
    [ev] = refusals(api)
    assert ev["metadata"]["namespace"] == "shop"
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Service", "namespace": "shop",
                                    "name": "bad"}
    assert ev["type"] == "Warning" and ev["source"] == {"component": "pyagent",
                                                         "host": "node-a"}
    assert "not-an-ip" in ev["message"] and "node-a" in ev["message"]

    syncs = len(agent.dataplane.syncs)
    api.update(endpoint_slice("default", "good-1", "good", ["10.0.0.1", "10.0.0.2"]))
    wait(lambda: len(agent.dataplane.syncs) > syncs)  # another sync, same refusal...
    time.sleep(0.3)
    assert len(refusals(api)) == 1  # ...no second Event

    api.update(service("shop", "bad", "10.96.0.9"))  # fixed
    wait(lambda: ("shop", "bad") in agent.dataplane.programmed)
    api.update(service("shop", "bad", "still-not-an-ip"))  # broken again: news
    wait(lambda: len(refusals(api)) == 2)
    assert "still-not-an-ip" in refusals(api)[1]["message"]


def test_event_failures_never_reach_the_sync(env) -> None:
    api, agent = env
    wait(lambda: len(refusals(api)) == 1)
    api.fail_next(500, 5)
    api.create(service("shop", "worse", "nope"))
    wait(lambda: ("shop", "worse") in {k[1:] for k in agent.store.errors})
    api.update(endpoint_slice("default", "good-1", "good", ["10.0.0.3"]))
    wait(lambda: {e.ip for sps in agent.dataplane.programmed[("default", "good")]
                  for e in sps.cluster_endpoints or ()} == {"10.0.0.3"})
