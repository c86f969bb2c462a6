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


# --- what a node needs (issue #11): checked offline here, run for real in
# tests/test_daemonset.py ---------------------------------------------------------

ROOT = DEPLOY.parents[1]


def pod() -> dict:
    _, ds = next(d for d in documents() if d[1]["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]


def config_yaml() -> str:
    _, cm = next(d for d in documents() if d[1]["kind"] == "ConfigMap")
    return cm["data"]["config.yaml"]


def test_init_container_enters_the_hosts_namespaces() -> None:
    spec = pod()
    (init,) = spec["initContainers"]
    assert init["command"][:2] == ["pyagent", "mount-host"]
    args = dict(zip(init["command"][2::2], init["command"][3::2], strict=True))
    env = {e["name"]: e["value"] for e in init["env"]}
    assert args["--host-init"] == "$(HOST_INIT)" and env["HOST_INIT"] == "/hostproc/1"
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/hostproc"]["name"]]["hostPath"]["path"] == "/proc"
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert args["--bpffs"] == "/sys/fs/bpf"
    assert init["securityContext"]["privileged"] is True
    # the agent uses what the init container mounts (on its command line, so
    # that any kube-proxy config file can be the ConfigMap's)
    agent = next(c for c in spec["containers"] if c["name"] == "pyagent")
    cmd = agent["command"]
    assert cmd[cmd.index("--cgroup") + 1] == args["--cgroup2"]
    assert cmd[cmd.index("--bpffs") + 1].startswith(args["--bpffs"] + "/")
    from pyagent.core.config import config_from_dict

    config_from_dict(yaml.safe_load(config_yaml()))  # a valid KubeProxyConfiguration


def test_bidirectional_only_where_kubernetes_allows_it() -> None:
    """The API server rejects Bidirectional propagation in unprivileged containers."""
    spec = pod()
    for c in spec["initContainers"] + spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert (c.get("securityContext") or {}).get("privileged") is True, c["name"]


def test_agent_derives_what_kube_proxy_derives() -> None:
    agent = next(c for c in pod()["containers"] if c["name"] == "pyagent")
    cmd = agent["command"]
    assert "--node-ip" not in cmd and "--interface" not in cmd  # from the Node object
    assert cmd[cmd.index("--hostname-override") + 1] == "$(NODE_NAME)"
    config = cmd[cmd.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert str(Path(config).parent) in mounts
    # kernel headers: the image's, linked at start; never the host's /usr/src
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["PYAGENT_HOST_MODULES"] in mounts and "/usr/src" not in mounts
    assert all("/usr/src" not in str(v) for v in pod()["volumes"])


def test_resources_come_from_the_measurement() -> None:
    agent = next(c for c in pod()["containers"] if c["name"] == "pyagent")
    limits, requests = agent["resources"]["limits"], agent["resources"]["requests"]
    doc = (ROOT / "docs" / "install.md").read_text()
    measured = re.search(r"the agent and both compile children together: about\s+(\d+) MiB", doc)
    assert measured, "docs/install.md records the measurement"
    limit = int(limits["memory"].removesuffix("Mi")) if limits["memory"].endswith("Mi") else \
        int(limits["memory"].removesuffix("Gi")) * 1024
    assert limit >= 1.3 * int(measured.group(1))  # headroom over the measured peak
    assert requests["memory"] and requests["cpu"]


def test_image_carries_headers_and_a_small_context() -> None:
    containerfile = (ROOT / "deploy" / "Containerfile").read_text()
    assert "linux-headers-$(dpkg --print-architecture)" in containerfile
    assert "PYAGENT_HOST_MODULES=/host/lib/modules" in containerfile
    assert "PYAGENT_BPF_SRC" not in containerfile  # the wheel carries bpf_src
    ignore = [line.strip() for line in (ROOT / ".containerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "vagrant/.cache"} <= set(ignore)

    def ignored(rel: str) -> bool:
        import fnmatch

        parts = Path(rel).parts
        return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(parts[0], pat)
                   or any(fnmatch.fnmatch("/".join(parts[:i + 1]), pat)
                          for i in range(len(parts)))
                   or (pat.startswith("**/") and any(fnmatch.fnmatch(p, pat[3:]) for p in parts))
                   for pat in ignore)
    size = 0
    for path in ROOT.rglob("*"):
        rel = str(path.relative_to(ROOT))
        if path.is_file() and not ignored(rel):
            size += path.stat().st_size
    assert size < 20 * 1024 * 1024, f"build context {size / 1e6:.0f} MB"
    assert not ignored("bpf_src/sock_lb.c") and not ignored("pyproject.toml")
