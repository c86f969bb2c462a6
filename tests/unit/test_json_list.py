"""Large JSON List files are read item by item (pyagent.core.json_list): the
same objects, refusals and messages as reading the whole tree, for every
shape a List file can take, and nothing but the text and where its items
start kept between reading and handing on."""

from __future__ import annotations

import json

import pytest

from pyagent.core import manifest_dir
from pyagent.core.json_list import Deferred
from pyagent.core.manifest_dir import load_manifests


def svc(name: str, kind: bool = True, **spec) -> dict:
    obj = {"apiVersion": "v1", "metadata": {"name": name, "namespace": "ns"},
           "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}], **spec}}
    return {"kind": "Service", **obj} if kind else obj


CASES = {
    "list": json.dumps({"kind": "List", "items": [svc("a"), svc("b")]}),
    # kubectl -o json writes its keys sorted: kind after items
    "kubectl order": json.dumps({"apiVersion": "v1", "items": [svc("a")], "kind": "List",
                                 "metadata": {"resourceVersion": ""}}),
    "typed list, kinds left out": json.dumps({"kind": "ServiceList",
                                              "items": [svc("a", False), svc("b", False)]}),
    "typed list, kind last": json.dumps({"items": [svc("a", False)], "kind": "ServiceList"}),
    "mixed kinds": json.dumps({"kind": "ServiceList", "items": [svc("a", False), svc("b")]}),
    "no kind, items": json.dumps({"items": [svc("a")]}),
    "untyped list, kindless item": json.dumps({"kind": "List", "items": [svc("a", False)]}),
    "empty": json.dumps({"kind": "List", "items": []}),
    "nested list": json.dumps({"kind": "List", "items": [{"kind": "List",
                                                          "items": [svc("n")]}, svc("b")]}),
    "duplicate name": json.dumps({"kind": "List", "items": [svc("a"), svc("a", type="x")]}),
    "bad items": json.dumps({"kind": "List", "items": [1, "x", None, {"kind": "Pod"}, svc("a")]}),
    "out of range number": '{"kind": "List", "items": [' + json.dumps(svc("a")) +
                           ', {"kind": "Service", "metadata": {"name": "z", "namespace": "ns"},'
                           ' "spec": {"ports": [{"port": 1e999}]}}]}',
    "NaN": '{"kind": "List", "items": [{"kind": "Service", "x": NaN}]}',
    "syntax error late": json.dumps({"kind": "List", "items": [svc("a")]})[:-3],
    "trailing data": json.dumps({"kind": "List", "items": [svc("a")]}) + " {}",
    "repeated items key": '{"kind": "List", "items": [' + json.dumps(svc("a")) +
                          '], "items": [' + json.dumps(svc("b")) + ']}',
    "items not an array": json.dumps({"kind": "List", "items": {"a": 1}}),
    "not a list": json.dumps(svc("a")),
    "service with items key": json.dumps({**svc("a"), "items": [1]}),
    "top-level array": json.dumps([svc("a"), svc("b")]),
    "whitespace": ' \n{ "kind" : "List" ,\n "items" : [ ' + json.dumps(svc("a")) + " ] }\n ",
}


def read(tmp_path, text: str, lazy_bytes: int, monkeypatch) -> tuple:
    (tmp_path / "f.json").write_text(text)
    monkeypatch.setattr(manifest_dir, "LAZY_BYTES", lazy_bytes)
    got = load_manifests(tmp_path)
    return got, (got.objects, got.refused, got.errors, got.origins)


@pytest.mark.parametrize("case", sorted(CASES))
def test_item_by_item_reads_what_the_whole_tree_reads(tmp_path, monkeypatch, case) -> None:
    _, whole = read(tmp_path, CASES[case], 1 << 40, monkeypatch)
    _, lazy = read(tmp_path, CASES[case], 0, monkeypatch)
    assert lazy == whole


def test_a_large_list_is_kept_as_text_until_handed_on(tmp_path, monkeypatch) -> None:
    text = json.dumps({"items": [svc(f"s{i}", False) for i in range(50)], "kind": "ServiceList"})
    got, _ = read(tmp_path, text, 0, monkeypatch)
    kept = list(got.by_key["Service"].values())
    assert len(kept) == 50 and all(type(o) is Deferred for o in kept)
    assert got.objects["Service"][7] == {**svc("s7"), "kind": "Service"}


def test_the_agent_source_serves_a_large_list_and_keeps_it_when_broken(tmp_path,
                                                                       monkeypatch) -> None:
    from pyagent.sources.manifests import ManifestSource

    class Sink:
        accepts_pages = True

        def __init__(self) -> None:
            self.names: dict[str, set] = {}

        def report(self, problems) -> None:
            pass

        def replace(self, kind, objects, first=True, **_) -> None:
            assert all(isinstance(o, dict) for o in objects)  # never a Deferred
            if first:
                self.names[kind] = set()
            self.names[kind] |= {o["metadata"]["name"] for o in objects}

    monkeypatch.setattr(manifest_dir, "LAZY_BYTES", 0)
    f = tmp_path / "all.json"
    f.write_text(json.dumps({"kind": "List", "items": [svc(f"s{i}") for i in range(1200)]}))
    sink = Sink()
    src = ManifestSource(tmp_path, sink)
    src.sync_once()
    assert sink.names["Service"] == {f"s{i}" for i in range(1200)}
    f.write_text(f.read_text()[:-100])  # half written
    src.sync_once()
    assert sink.names["Service"] == {f"s{i}" for i in range(1200)}
    assert any("all.json" in e and "last good" in e for e in src.dir.errors)
