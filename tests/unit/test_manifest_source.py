"""The manifests directory source: re-read on change, and a file that breaks
keeps contributing its last good objects (a half-written edit removes nothing)."""

from __future__ import annotations

import os

from pyagent.sources.manifests import ManifestDirectory

SVC = """apiVersion: v1
kind: Service
metadata: {name: %s, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
"""


def names(objs: dict) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs["Service"])


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
