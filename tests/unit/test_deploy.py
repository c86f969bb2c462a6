"""deploy/kubernetes/*.yaml checked offline against the Kubernetes object
schemas of the official client: every key must be a field of its model (no
typo is silently ignored), every value of the field's type, required fields
present."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
MODELS = kubernetes.client.models
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str,
              "date": str, "object": object}


def model_for(doc: dict) -> str:
    group_version = doc["apiVersion"].split("/")[-1]
    return f"{group_version.capitalize()}{doc['kind']}"


def check(obj: Any, type_name: str, path: str) -> list[str]:
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(obj, list):
            return [f"{path}: expected a list"]
        return [e for i, x in enumerate(obj) for e in check(x, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(obj, dict):
            return [f"{path}: expected a mapping"]
        inner = m.group(1) or m.group(2)
        return [e for k, v in obj.items() for e in check(v, inner, f"{path}.{k}")]
    if type_name in PRIMITIVES:
        ok = isinstance(obj, PRIMITIVES[type_name]) and not (
            type_name == "int" and isinstance(obj, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {obj!r}"]
    klass = getattr(MODELS, type_name)
    if not isinstance(obj, dict):
        return [f"{path}: expected a {type_name} object"]
    fields = {v: k for k, v in klass.attribute_map.items()}
    errors = [f"{path}.{key}: not a field of {type_name}" for key in obj if key not in fields]
    for key, value in obj.items():
        if key in fields:
            errors += check(value, klass.openapi_types[fields[key]], f"{path}.{key}")
    return errors


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d)
                for d in yaml.safe_load_all(path.read_text()) if d]
    return out


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[n for n, _ in documents()])
def test_manifest_matches_schema(name: str, doc: dict) -> None:
    type_name = model_for(doc)
    assert check(doc, type_name, name) == []

    # deserializing checks required fields client-side
    kubernetes.client.ApiClient().deserialize(json.dumps(doc), type_name, "application/json")


def test_the_checker_catches_mistakes() -> None:
    _, ds = next(d for d in documents() if d[1]["kind"] == "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "10256"
    errors = check(bad, "V1DaemonSet", "ds")
    assert any("hostNetwrok: not a field" in e for e in errors)
    assert any("containerPort: expected int" in e for e in errors)


def test_daemonset_runs_the_agent_with_least_privilege() -> None:
    _, ds = next(d for d in documents() if d[1]["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    agent = next(c for c in pod["containers"] if c["name"] == "pyagent")
    caps = agent["securityContext"]["capabilities"]
    assert set(caps["add"]) == {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"}
    assert caps["drop"] == ["ALL"] and not agent["securityContext"].get("privileged")
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert {"/sys/fs/bpf", "/run/pyagent"} <= mounts


def test_missing_required_field_is_refused() -> None:
    doc = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
           "spec": {"template": {}}}  # no selector
    with pytest.raises(Exception, match="selector"):
        kubernetes.client.ApiClient().deserialize(json.dumps(doc), "V1DaemonSet",
                                                  "application/json")
