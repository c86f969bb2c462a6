"""The one input loader (pyagent.core.inputs, behind run/plan/trace): only JSON
data comes out, YAML that JSON cannot hold is refused with the path and the
reason, and the cost of a file is bounded (size, documents, alias budget)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pyagent.core.config import load_config
from pyagent.core.manifest_dir import load_manifests
from pyagent.core.parse import ParseError

# pyagent.core.inputs is imported where needed: the tests of behaviour through
# load_manifests / load_config also run (and fail) against the code before it.

SERVICE = """\
kind: Service
metadata: {{name: {name}, namespace: ns{meta}}}
spec: {{clusterIP: 10.96.0.{n}, ports: [{{port: {port}}}]{spec}}}
"""


def service(name: str, n: int, meta: str = "", spec: str = "", port: str = "80") -> str:
    return SERVICE.format(name=name, n=n, meta=meta, spec=spec, port=port)


def test_timestamps_stay_the_text_they_were_written_as(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service(
        "dated", 1, meta=", annotations: {deployed: 2024-01-01, at: 2024-01-01T10:00:00Z, "
                         "tagged: !!timestamp 2001-12-14}"))
    got = load_manifests(tmp_path)
    assert not got.all_errors()
    (obj,) = got.objects["Service"]
    assert obj["metadata"]["annotations"] == {
        "deployed": "2024-01-01", "at": "2024-01-01T10:00:00Z", "tagged": "2001-12-14"}
    json.dumps(obj)  # the agent's first sync serialised this and died (TypeError)


# (what goes into the object, the reason the object is refused with)
NOT_JSON = [
    ("meta", ", annotations: {x: !!binary aGVsbG8=}",
     "metadata.annotations.x: binary data (!!binary) cannot be held in JSON"),
    ("spec", ", extra: !!set {a, b}", "spec.extra: a set (!!set) cannot be held in JSON"),
    ("spec", ", extra: !!omap [a: 1]", "spec.extra: an ordered map (!!omap)"),
    ("spec", ", extra: !!pairs [a: 1]", "spec.extra: a list of pairs (!!pairs)"),
    ("port", "!!python/object/apply:os.system [echo]",
     "spec.ports[0].port: a value tagged 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("port", "!local 80", "spec.ports[0].port: a value tagged '!local'"),
    ("port", ".inf", "spec.ports[0].port: the number '.inf' (JSON numbers are finite)"),
    ("port", "-.Inf", "spec.ports[0].port: the number '-.Inf'"),
    ("port", ".nan", "spec.ports[0].port: the number '.nan'"),
    ("port", "1" * 5000, "spec.ports[0].port: an integer of 5000 digits"),
    ("meta", ", labels: {1: a, b: c}",
     "metadata.labels: mapping key 1 (int) is not a string; quote it"),
    ("meta", ", labels: {~: a}", "metadata.labels: mapping key ~ (null) is not a string"),
    ("meta", ", labels: {on: a}", "metadata.labels: mapping key on (bool) is not a string"),
    ("meta", ", labels: {1.5: a}", "metadata.labels: mapping key 1.5 (float) is not a string"),
    ("meta", ", labels: {[a]: b}", "metadata.labels: a sequence as a mapping key"),
    ("spec", ", deep: {x: {? {a: 1} : b}}", "spec.deep.x: a mapping as a mapping key"),
]


@pytest.mark.parametrize(("where", "value", "reason"), NOT_JSON,
                         ids=[r.split(":")[0] + "-" + v[:12] for _, v, r in NOT_JSON])
def test_values_json_cannot_hold_refuse_the_object_only(tmp_path: Path, where: str,
                                                        value: str, reason: str) -> None:
    bad = service("bad", 1, **{where: value})
    (tmp_path / "a.yaml").write_text(bad + "---\n" + service("good", 2))
    (tmp_path / "b.yaml").write_text(service("other", 3))
    got = load_manifests(tmp_path)
    assert sorted(o["metadata"]["name"] for o in got.objects["Service"]) == ["good", "other"]
    assert list(got.refused["Service"]) == [("ns", "bad")]
    assert reason in got.refused["Service"][("ns", "bad")]
    # Reported with file, kind, namespace/name and reason.
    assert any(e.startswith("a.yaml: Service ns/bad: ") and reason in e
               for e in got.all_errors()), got.all_errors()
    for obj in got.objects["Service"]:
        assert json.loads(json.dumps(obj, allow_nan=False)) == obj


def test_a_document_that_cannot_be_constructed_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service("bad", 1, port="!!int [80]") + "---\n"
                                     + service("good", 2))
    got = load_manifests(tmp_path)
    assert [o["metadata"]["name"] for o in got.objects["Service"]] == ["good"]
    assert "expected a scalar node" in got.refused["Service"][("ns", "bad")]


def test_recursive_alias_is_refused_and_the_file_goes_on(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "kind: Service\nmetadata: {name: rec, namespace: ns}\n"
        "spec: &r {clusterIP: 10.96.0.1, ports: [{port: 80}], self: *r}\n---\n"
        + service("good", 2))
    got = load_manifests(tmp_path)
    assert [o["metadata"]["name"] for o in got.objects["Service"]] == ["good"]
    assert "contains itself" in got.refused["Service"][("ns", "rec")]


def test_missing_name_names_the_file_and_the_document(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service("good", 1) + "---\n"
                                     "kind: Service\nmetadata: {namespace: ns}\nspec: {}\n")
    got = load_manifests(tmp_path)
    assert got.errors == ["a.yaml: Service ns/<unnamed>: metadata.name: missing, ignored "
                          "(document 2)"]


def test_same_object_twice_is_reported_and_the_later_one_used(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service("dup", 1))
    (tmp_path / "b.yaml").write_text(service("dup", 2))
    got = load_manifests(tmp_path)
    assert [o["spec"]["clusterIP"] for o in got.objects["Service"]] == ["10.96.0.2"]
    assert got.errors == ["b.yaml: Service ns/dup: also defined in a.yaml; the later "
                          "definition is used"]


# --- cost bounds -------------------------------------------------------------------------

def laughs(levels: int, width: int = 9) -> str:
    """A Service whose annotations nest aliases `levels` deep (width**levels nodes)."""
    lines = ["kind: Service", "metadata:", "  name: lol", "  namespace: ns",
             "  annotations:", '    a0: &a0 ["lol"' + ', "lol"' * (width - 1) + "]"]
    lines += [f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels)]
    return "\n".join(lines) + "\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"


def test_alias_expansion_is_bounded_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(laughs(9))  # 9**9 = 387 million nodes in ~500 bytes
    (tmp_path / "b.yaml").write_text(service("good", 2))
    got = load_manifests(tmp_path)
    assert [o["metadata"]["name"] for o in got.objects["Service"]] == ["good"]
    assert got.errors == ["a.yaml: document 1 (Service ns/lol): expands to more than "
                          "20,000,000 YAML nodes (pyagent.parseLimits.maxNodes)"]
    # Under the node budget, the alias budget still holds.
    (tmp_path / "a.yaml").write_text(laughs(7))  # 4.8 million nodes
    got = load_manifests(tmp_path)
    assert got.errors == ["a.yaml: document 1 (Service ns/lol): aliases expand to more than "
                          "1,000,000 YAML nodes in this file (pyagent.parseLimits.maxAliasNodes)"]
    # Modest aliasing is fine and comes out as plain data.
    (tmp_path / "a.yaml").write_text(laughs(3))
    got = load_manifests(tmp_path)
    assert not got.errors
    lol = next(o for o in got.objects["Service"] if o["metadata"]["name"] == "lol")
    assert len(lol["metadata"]["annotations"]["a2"]) == 9


BOMB_PROBE = """
import resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pyagent.core.config import NodeConfig
from pyagent.sources.manifests import ManifestDirectory
from pyagent.core.store import ServiceStore
d = ManifestDirectory(Path(sys.argv[1]))
store = ServiceStore(NodeConfig(node_name="n"))
t0 = time.process_time()
loaded = d.load()
objects = loaded.objects if hasattr(loaded, "objects") else loaded
for kind in ("Service", "EndpointSlice", "Node"):
    store.replace(kind, objects[kind])
print(sorted(k[1] for k in store.service_keys()), round(time.process_time() - t0, 2))
print("\\n".join(d.errors))
"""


def test_a_bomb_in_the_watched_directory_costs_no_memory_or_minutes(tmp_path: Path) -> None:
    """The agent's own path (directory reader and store) under a 1 GiB
    address-space limit and a CPU limit: main spent 104 s and 2 GB here."""
    (tmp_path / "a.yaml").write_text(laughs(9, width=9))
    (tmp_path / "b.yaml").write_text(service("good", 2))
    proc = subprocess.run(
        ["prlimit", "--cpu=60", sys.executable, "-c", BOMB_PROBE, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served, errors = proc.stdout.split("\n", 1)
    assert served.startswith("['good']")
    assert "a.yaml: document 1 (Service ns/lol): expands to more than" in errors


def test_file_size_and_document_count_are_bounded(tmp_path: Path) -> None:
    from pyagent.core.inputs import ParseLimits

    (tmp_path / "a.yaml").write_text("---\n".join(service(f"s{i}", i) for i in range(5)))
    small = ParseLimits(max_objects=3)
    got = load_manifests(tmp_path, small)
    assert got.errors == ["a.yaml: more than 3 objects (pyagent.parseLimits.maxObjects)"]
    assert len(got.objects["Service"]) == 3  # the ones before the limit
    items = [json.loads(json.dumps(yaml.safe_load(service(f"s{i}", i)))) for i in range(5)]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"kind": "List", "items": items}))
    (tmp_path / "b.json").write_text(json.dumps({"kind": "List", "items": items}))
    got = load_manifests(tmp_path, small)
    assert got.errors == ["a.yaml: more than 3 objects (pyagent.parseLimits.maxObjects)",
                          "b.json: more than 3 objects (pyagent.parseLimits.maxObjects)"]
    (tmp_path / "b.json").unlink()
    tiny = ParseLimits(max_file_bytes=100)
    got = load_manifests(tmp_path, tiny)
    assert len(got.errors) == 1 and got.errors[0].startswith("a.yaml: cannot read: ")
    assert "more than the limit of 100 (pyagent.parseLimits.maxFileBytes)" in got.errors[0]


def test_limits_come_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pyagent: {parseLimits: {maxFileBytes: 1000, maxAliasNodes: 10}}\n")
    from pyagent.core.inputs import ParseLimits

    limits = load_config(cfg).parse_limits
    assert (limits.max_file_bytes, limits.max_alias_nodes) == (1000, 10)
    assert limits.max_nodes == ParseLimits().max_nodes
    for bad, msg in (("{maxFileBytes: -1}", "expected a positive integer"),
                     ("{maxFileBytes: true}", "expected a positive integer"),
                     ("{nope: 1}", "pyagent.parseLimits: unknown key 'nope'"),
                     ("[1]", "expected a mapping")):
        cfg.write_text(f"pyagent: {{parseLimits: {bad}}}\n")
        with pytest.raises(ValueError, match="parseLimits") as exc:
            load_config(cfg)
        assert msg in str(exc.value)


def test_config_files_go_through_the_same_loader(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent("""\
        a0: &a0 [x, x, x, x, x, x, x, x, x, x]
        a1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
        a2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
        a3: &a3 [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]
        a4: &a4 [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]
        a5: &a5 [*a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4]
        a6: [*a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5]
        """))
    with pytest.raises(ValueError, match=r"c\.yaml: document 1.*maxAliasNodes"):
        load_config(cfg)
    cfg.write_text("syncPeriod: 2024-01-01\n")
    with pytest.raises(ValueError, match="syncPeriod: invalid duration '2024-01-01'"):
        load_config(cfg)
    cfg.write_text("featureGates: {!!binary aGk=: true}\n")
    with pytest.raises(ValueError, match="featureGates: mapping key: binary data"):
        load_config(cfg)


def test_json_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"kind": "Service", "metadata": {"name": "a"}, '
                                     '"spec": {"clusterIP": "10.96.0.1", "x": NaN}}')
    (tmp_path / "b.json").write_text('{"kind": "Service", "metadata": {"name": "b"}, '
                                     '"spec": {"clusterIP": "10.96.0.2", "x": 1e999}}')
    (tmp_path / "c.json").write_text("[" * 100_000 + "]" * 100_000)
    got = load_manifests(tmp_path)
    errors = "\n".join(got.all_errors())
    assert "a.json: invalid JSON: NaN is not JSON" in errors
    assert "b.json: Service default/b: spec.x: inf is not a JSON number" in errors
    assert "c.json: invalid JSON" in errors


def test_load_single_and_json_data() -> None:
    from pyagent.core.inputs import json_data

    with pytest.raises(ParseError, match="mapping key 1 .int. is not a string"):
        json_data({"a": {1: "x"}})
    with pytest.raises(ParseError, match=r"^a\[0\]: a tuple value cannot be held in JSON"):
        json_data({"a": [(1, 2)]})
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ParseError, match="refers to itself"):
        json_data(loop)
    assert json_data({"a": [1, 2.5, None, True, "x"]}) == {"a": [1, 2.5, None, True, "x"]}


def test_load_file_never_raises(tmp_path: Path) -> None:
    from pyagent.core.inputs import load_file, load_single

    missing = load_file(tmp_path / "nope.yaml")
    assert missing.broken and missing.errors[0].startswith("nope.yaml: cannot read")
    (tmp_path / "two.yaml").write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(ParseError, match="expected one document, found 2"):
        load_single(tmp_path / "two.yaml")
