"""gc_pause: a list into the store runs without the cyclic collector and
freezes what it made (the collections after it scan only what is new); the
agent's next sync then collects everything once, so a garbage cycle frozen
with the data does not live on."""

from __future__ import annotations

import gc

from pyagent.core import gc_pause
from pyagent.core.config import NodeConfig
from pyagent.core.store import ServiceStore


def service(i: int) -> dict:
    return {"kind": "Service", "metadata": {"name": f"s{i}", "namespace": "ns"},
            "spec": {"clusterIP": f"10.96.0.{i + 1}", "ports": [{"port": 80}]}}


def test_a_list_runs_without_collections_and_freezes_what_it_made() -> None:
    gc_pause.take_frozen()
    gc.unfreeze()
    store = ServiceStore(NodeConfig(node_name="n"))
    seen: list[bool] = []
    original = store._apply

    def apply(*args, **kw):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return original(*args, **kw)
    store._apply = apply  # type: ignore[method-assign]
    store.replace("Service", [service(i) for i in range(3)])
    assert seen == [False, False, False] and gc.isenabled()
    assert gc.get_freeze_count() > 0 and gc_pause.take_frozen()
    assert not gc_pause.take_frozen()  # once
    gc.unfreeze()


def test_the_agent_collects_after_a_sync_that_follows_a_list(monkeypatch) -> None:
    from fakes import FakeDataplane

    from pyagent.node import agent as agent_mod

    collected: list[int] = []
    monkeypatch.setattr(agent_mod, "release_free_memory", lambda: collected.append(1))
    agent = agent_mod.Agent(NodeConfig(node_name="n"), FakeDataplane())
    gc_pause.take_frozen()
    for kind in ("Service", "EndpointSlice", "Node"):
        agent.sink.replace(kind, [service(0)] if kind == "Service" else [])
    agent.sync(full=True)
    assert collected == [1]  # a small sync, but a list froze objects
    agent.sync(full=False)
    assert collected == [1]
    gc.unfreeze()
