"""Manifests text (issue 12, items 1 and 3): YAML and JSON files that are
valid, broken, truncated, tagged with what JSON cannot hold (!!binary,
!!set, !!python/..., dates, .inf), keyed by non-strings, aliased and
merged, read by the agent's directory reader and applied to a store, the
way `pyagent run`, `plan` and `trace` all do. Nothing raises; everything
handed on is JSON data; every message is one line.

Parse limits are small here so that alias-heavy cases stay cheap; the
defaults are covered in tests/unit/test_inputs.py."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from pyagent.core.config import NodeConfig
from pyagent.core.inputs import ParseLimits
from pyagent.core.manifest_dir import ManifestReader
from pyagent.core.sink import KINDS
from pyagent.core.store import ServiceStore

from .common import HOSTILE, TEMPLATES, fuzz, is_json, json_values, mutated

LIMITS = ParseLimits(max_file_bytes=200_000, max_objects=50, max_nodes=50_000,
                     max_alias_nodes=5_000)
CONFIG = NodeConfig(node_name="node-1", node_ips=("192.168.0.2",))
DIR = Path(tempfile.mkdtemp(prefix="pyagent-fuzz-"))
SNIPPETS = [
    "!!binary aGk=", "!!set {a, b}", "!!python/object/apply:os.system [id]", "!local x",
    "!!timestamp 2024-01-01", "2024-01-01", "2024-01-01T10:00:00Z", ".inf", "-.inf", ".nan",
    "~", "null", "on", "yes", "0x1F", "0o17", "1_000", "1:20:30", "=", "&a ", "*a", "&b [*b]",
    "<<: *a", "<<: {x: 1}", "<<: [1]", "? [a, b]\n: c", "? {a: 1}\n: c", "~: v", "1: v",
    "{", "}", "[", "]", "'", '"', "\\", "\t", "\n", "\n---\n", "\n...\n", "%YAML 1.1\n---\n",
    "!!int [1]", "!!map 5", "!!str {a: 1}", "- ", ": ", "#", "|\n  x", ">-\n  y", "\x00",
    "\ufeff", "\u2028", "1" * 5000, "9" * 400,
]
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
VALID = yaml.safe_dump_all([TEMPLATES[k]() for k in ("Service", "EndpointSlice", "Node")])


def laughs(levels: int, width: int) -> str:
    lines = ["kind: Service", "metadata: {name: lol, namespace: ns}", "spec:",
             "  x0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def check(text: str | bytes, suffix: str = ".yaml") -> None:
    for old in DIR.iterdir():
        old.unlink()
    path = DIR / f"a{suffix}"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    (DIR / "b.yaml").write_text(VALID)  # another file keeps applying
    loaded = ManifestReader(DIR, LIMITS).load()
    for kind in KINDS:
        for obj in loaded.objects[kind]:
            assert is_json(obj), obj
            assert obj["kind"] == kind
    names = {o["metadata"]["name"] for o in loaded.objects["Service"]}
    assert "web" in names or ("Service", ("ns", "web")) in {
        ("Service", k) for k in loaded.refused["Service"]} or any(
        "also defined" in e for e in loaded.errors)
    store = ServiceStore(CONFIG, log_invalid=False)
    for kind in KINDS:
        store.replace(kind, loaded.objects[kind], refused=loaded.refused[kind],
                      origins=loaded.origins[kind])
    state = store.full_state()
    json.dumps(state.to_plan_json())
    assert store.internal_errors == 0
    for msg in loaded.all_errors() + store.error_messages():
        assert isinstance(msg, str) and "\n" not in msg and "\r" not in msg, msg


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Objects (valid, edited or random values) dumped as YAML, then spliced
    with snippets at random places, or cut short."""
    docs = draw(st.lists(st.one_of(st.sampled_from(sorted(TEMPLATES)).flatmap(
        lambda k: mutated(k, json_values)), json_values), min_size=1, max_size=3))
    try:
        text = yaml.dump_all(docs, Dumper=DUMPER, allow_unicode=draw(st.booleans()))
    except (yaml.YAMLError, UnicodeEncodeError):  # e.g. a lone surrogate: not YAML text
        text = VALID
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]
    return text


@fuzz(400)
@given(documents())
def test_fuzz_structured_manifests(text: str) -> None:
    check(text)


@fuzz(1300)
@given(case=st.integers(0, 2 ** 32), json_file=st.booleans())
def test_fuzz_random_manifests_text(case: int, json_file: bool) -> None:
    """Byte-level edits of valid manifests plus snippets, seeded by `case`."""
    rng = random.Random(case)
    text = json.dumps([TEMPLATES[k]() for k in TEMPLATES]) if json_file else VALID
    if rng.random() < 0.1:
        text = laughs(rng.randint(2, 8), rng.randint(2, 10)) + "---\n" + text
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.5:
            text = text[:at] + rng.choice(SNIPPETS + HOSTILE) + text[at:]
        elif op < 0.75:
            text = text[:at] + text[at + rng.randint(1, 20):]
        else:
            text = text[:at] + chr(rng.randrange(0x110000)) + text[at:]
    check(text, ".json" if json_file else ".yaml")


@fuzz(100)
@given(st.binary(max_size=300), st.sampled_from([".yaml", ".json"]))
def test_fuzz_raw_bytes(data: bytes, suffix: str) -> None:
    check(data, suffix)
