"""Reading a manifests directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyagent.core.manifest_dir import load_manifests


def names(objs: list[dict]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_files_documents_and_lists(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "kind: Service\nmetadata: {name: s2}\n---\n"
        "kind: List\nitems:\n- {kind: Node, metadata: {name: n1}}\n"
        "- {kind: EndpointSlice, metadata: {name: e1}}\n---\n")
    (tmp_path / "a.yml").write_text("kind: Service\nmetadata: {name: s1}\n")
    (tmp_path / "c.json").write_text(json.dumps([{"kind": "Service", "metadata": {"name": "s3"}}]))
    (tmp_path / "d.json").write_text(json.dumps(
        {"kind": "ServiceList", "apiVersion": "v1", "items": [{"metadata": {"name": "s4"}}]}))
    (tmp_path / ".hidden.yaml").write_text("kind: Service\nmetadata: {name: hidden}\n")
    (tmp_path / "notes.txt").write_text("kind: Service\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.yaml").write_text("kind: Service\nmetadata: {name: nested}\n")
    got = load_manifests(tmp_path)
    assert got.errors == []
    assert names(got.objects["Service"]) == ["s1", "s2", "s3", "s4"]  # sorted file order
    assert names(got.objects["Node"]) == ["n1"]
    assert names(got.objects["EndpointSlice"]) == ["e1"]


def test_bad_content_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "kind: Service\nmetadata: {name: kept}\n---\nkind: [broken\n")
    (tmp_path / "b.json").write_text("{nope")
    (tmp_path / "c.yaml").write_text(
        "kind: Deployment\nmetadata: {name: web, namespace: prod}\n---\n"
        "metadata: {name: kindless}\n---\n42\n")
    (tmp_path / "d.yaml").write_bytes(b"\xff\xfe")
    got = load_manifests(tmp_path)
    assert names(got.objects["Service"]) == ["kept"]
    errors = "\n".join(got.errors)
    assert "a.yaml: invalid YAML" in errors
    assert "b.json: invalid JSON" in errors
    assert "c.yaml: Deployment prod/web: kind Deployment is not used" in errors
    assert "c.yaml: object kindless: no kind" in errors
    assert "c.yaml: expected an object, got int" in errors
    assert "d.yaml: cannot read" in errors


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        load_manifests(tmp_path / "absent")
