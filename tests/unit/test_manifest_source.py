"""The manifests directory source: re-read on change, and a file that breaks
keeps contributing its last good objects (a half-written edit removes nothing)."""

from __future__ import annotations

import os

from pyagent.core.manifest_dir import ManifestSet
from pyagent.sources.manifests import ManifestDirectory

SVC = """apiVersion: v1
kind: Service
metadata: {name: %s, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
"""


def names(loaded: ManifestSet) -> list[str]:
    return sorted(o["metadata"]["name"] for o in loaded.objects["Service"])


def test_reload_and_keep_last_good(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(SVC % "a" + "---\n" + SVC % "a2")
    (tmp_path / "b.yaml").write_text(SVC % "b")
    d = ManifestDirectory(tmp_path)
    assert names(d.load()) == ["a", "a2", "b"] and not d.errors
    assert not d.changed()

    (tmp_path / "a.yaml").write_text(SVC % "a" + "---\nkind: Service\nmetadata: {name: [\n")
    os.utime(tmp_path / "a.yaml", ns=(1, 1))  # make the change visible even within one tick
    assert d.changed()
    assert names(d.load()) == ["a", "a2", "b"]  # a2 survives the broken edit
    assert any("a.yaml" in e and "last good" in e for e in d.errors)

    (tmp_path / "a.yaml").write_text(SVC % "c")
    assert names(d.load()) == ["b", "c"] and not d.errors
    (tmp_path / "b.yaml").unlink()
    assert names(d.load()) == ["c"]


def test_a_broken_new_file_contributes_nothing_and_is_reported(tmp_path) -> None:
    (tmp_path / "x.yaml").write_text("kind: Service\nmetadata: {name: x\n")
    d = ManifestDirectory(tmp_path)
    assert names(d.load()) == []
    assert any("x.yaml" in e for e in d.errors)


# --- values JSON cannot hold, while the agent runs (issue 12, item 1) ---------------------

def _agent(tmp_path, monkeypatch):
    import dataclasses

    from fakes import FakeDataplane

    from pyagent.core.config import NodeConfig
    from pyagent.node.agent import Agent
    from pyagent.observe.observability import Observability

    monkeypatch.setenv("PYAGENT_RUN_DIR", str(tmp_path / "run"))
    config = dataclasses.replace(NodeConfig(node_name="n"), min_sync_period=0.01,
                                 sync_period=60, bpffs=str(tmp_path / "bpffs"))
    dp = FakeDataplane()
    obs = Observability(config)
    agent = Agent(config, dp, observers=[obs])
    obs.attach(dp)
    return agent, dp, obs


def _port(dp, name: str) -> int | None:
    states = dp.programmed.get(("ns", name))
    return states[0].service.port if states else None


def svc_text(name: str, port: int, extra: str = "") -> str:
    return ("kind: Service\n"
            f"metadata: {{name: {name}, namespace: ns{extra}}}\n"
            f"spec: {{clusterIP: 10.96.0.{port % 250}, ports: [{{port: {port}}}]}}\n")


def _touch(path, text: str) -> None:
    # whole or not at all: the source polls every 0.05 s, and a truncated
    # file read half-way is a valid, empty manifest (its Service would go)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # visibly changed


def test_the_agent_serves_a_dated_annotation_and_refuses_what_json_cannot_hold(
        tmp_path, monkeypatch) -> None:
    from fakes import wait

    from pyagent.sources.manifests import ManifestSource

    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text(svc_text("dated", 80, ", annotations: {deployed: 2024-01-01}"))
    (mdir / "b.yaml").write_text(svc_text("b", 90))
    agent, dp, obs = _agent(tmp_path, monkeypatch)
    source = ManifestSource(mdir, agent.sink, interval=0.05)
    agent.start()
    source.start()  # main: TypeError: Object of type date is not JSON serializable
    try:
        wait(lambda: _port(dp, "dated") == 80 and _port(dp, "b") == 90)
        # A bad edit of one object: refused by name, its last good version stays.
        _touch(mdir / "a.yaml", svc_text("dated", 81, ", annotations: {x: !!binary aGk=}"))
        wait(lambda: ("Service", "ns", "dated") in agent.store.errors)
        assert _port(dp, "dated") == 80
        assert agent.store.error_messages() == [
            "a.yaml: Service ns/dated: metadata.annotations.x: binary data (!!binary) "
            "cannot be held in JSON"]
        # Other files keep applying while it is bad (main: every re-read failed).
        _touch(mdir / "b.yaml", svc_text("b", 91))
        wait(lambda: _port(dp, "b") == 91)
        assert _port(dp, "dated") == 80
        # Fixed: the new version is served and the error is gone.
        _touch(mdir / "a.yaml", svc_text("dated", 82))
        wait(lambda: _port(dp, "dated") == 82)
        assert agent.store.errors == {}
    finally:
        source.stop()
        agent.stop()


def test_a_stuck_file_shows_in_the_source_errors_metric(tmp_path, monkeypatch) -> None:
    from fakes import wait

    from pyagent.sources.manifests import ManifestSource

    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text(svc_text("a", 80))
    agent, dp, obs = _agent(tmp_path, monkeypatch)
    source = ManifestSource(mdir, agent.sink, interval=0.05)
    gauge = obs.metrics.registry.get_sample_value
    agent.start()
    source.start()
    try:
        wait(lambda: _port(dp, "a") == 80)
        assert gauge("pyagent_source_errors") == 0
        _touch(mdir / "a.yaml", svc_text("a", 81) + "---\nkind: [\n")  # half-written
        wait(lambda: gauge("pyagent_source_errors") == 2)  # the syntax error, the fallback
        assert _port(dp, "a") == 80  # its last good content is served
        assert any(p.startswith("a.yaml: invalid YAML") for p in agent.store.source_problems)
        _touch(mdir / "a.yaml", svc_text("a", 81))
        wait(lambda: _port(dp, "a") == 81 and gauge("pyagent_source_errors") == 0)
    finally:
        source.stop()
        agent.stop()


def test_plan_and_the_agent_see_the_same_state_and_errors(tmp_path) -> None:
    from pyagent.core.config import NodeConfig
    from pyagent.core.planner import load_state
    from pyagent.core.store import ServiceStore
    from pyagent.sources.manifests import ManifestSource

    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text(
        svc_text("dated", 80, ", annotations: {deployed: 2024-01-01}") + "---\n"
        + svc_text("keys", 81, ", labels: {1: a, b: c}") + "---\n"
        + svc_text("bomb", 82, ", annotations: {x: !!set {a}}") + "---\n"
        "kind: Service\nmetadata: {namespace: ns}\n")
    (mdir / "b.yaml").write_text(svc_text("b", 90) + "---\nkind: [\n")
    config = NodeConfig(node_name="n")
    plan_state, plan_errors, _ = load_state(mdir, config)
    store = ServiceStore(config, log_invalid=False)
    ManifestSource(mdir, store).sync_once()
    assert store.full_state() == plan_state
    assert sorted(plan_errors) == sorted(store.source_problems + store.error_messages())
    assert [s.service.name for s in plan_state.service_ports] == ["b", "dated"]


def test_a_directory_reaches_a_paged_sink_in_pages_and_prunes_at_the_end(
        tmp_path, monkeypatch) -> None:
    from pyagent.core.config import NodeConfig
    from pyagent.core.store import ServiceStore
    from pyagent.sources import manifests as source

    monkeypatch.setattr(source, "PAGE", 2)
    store = ServiceStore(NodeConfig(node_name="n1"))
    calls = []
    replace = store.replace
    monkeypatch.setattr(store, "replace", lambda kind, objs, **kw: (
        calls.append((kind, len(objs), kw.get("first", True), kw.get("last", True))),
        replace(kind, objs, **kw)))
    (tmp_path / "a.yaml").write_text("---\n".join(SVC % f"s{i}" for i in range(5)) +
                                     "---\nkind: Service\nmetadata: {name: bad, namespace: ns}\n"
                                     "spec: {clusterIP: 10.96.0.9, ports: [{port: 0}]}\n")
    src = source.ManifestSource(tmp_path, store)
    src.sync_once()
    assert [c for c in calls if c[0] == "Service"] == [
        ("Service", 2, True, False), ("Service", 2, False, False), ("Service", 2, False, True)]
    assert store.service_keys() == [("ns", f"s{i}") for i in range(5)]
    assert any("bad" in e for e in store.error_messages())
    (tmp_path / "a.yaml").write_text(SVC % "s3")
    src.sync_once()
    assert store.service_keys() == [("ns", "s3")]


def test_a_broken_json_list_keeps_its_last_good_objects_and_refusals(tmp_path) -> None:
    """The last good content is kept as text and parsed again: the same
    objects, and an object refused then (a port out of range) is refused
    again by name, so the store keeps its last good version."""
    import json

    good = {"kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": n, "namespace": "ns"},
         "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}} for n in ("j1", "j2")]}
    good["items"].append({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": "bad", "namespace": "ns"},
                          "spec": {"ports": [{"port": 1e999}]}})
    (tmp_path / "l.json").write_text(json.dumps(good).replace("Infinity", "1e999"))
    d = ManifestDirectory(tmp_path)
    first = d.load()
    assert names(first) == ["j1", "j2"] and ("ns", "bad") in first.refused["Service"]
    (tmp_path / "l.json").write_text('{"kind": "List", "items": [')
    os.utime(tmp_path / "l.json", ns=(1, 1))
    again = d.load()
    assert names(again) == ["j1", "j2"]
    assert again.refused["Service"] == first.refused["Service"]
    assert any("l.json" in e and "last good" in e for e in d.errors)
