"""Single objects through the store (issue 12, item 2): a valid Service,
EndpointSlice or Node with random edits anywhere, JSON or not (keys that are
not strings, sets, bytes, dates, NaN, huge ints, tuples, objects), through
replace, upsert and delete. Nothing raises; a refused update leaves the last
good version served; parsers never fail in any way but ParseError."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from pyagent.core.config import NodeConfig
from pyagent.core.parse import ParseError, object_name
from pyagent.core.store import ServiceStore

from .common import TEMPLATES, any_values, fuzz, is_json, json_values, mutated, random_edits

CONFIG = NodeConfig(node_name="node-1", node_ips=("192.168.0.2",),
                    cluster_cidrs=("10.244.0.0/16",))


def named(kind: str, obj: object) -> tuple[str, str] | None:
    try:
        return object_name(kind, obj)
    except ParseError:
        return None


def check_one(kind: str, bad: object) -> None:
    store = ServiceStore(CONFIG, log_invalid=False)
    good = TEMPLATES[kind]()
    for k in TEMPLATES:
        store.replace(k, [TEMPLATES[k]()])  # type: ignore[arg-type]
    before = store.full_state()
    store.upsert(kind, bad)  # type: ignore[arg-type]
    assert store.internal_errors == 0
    name = named(kind, bad)
    key = (kind, *name) if name else None
    if key in store.errors:
        if name == named(kind, good):  # a refused update: the last good version stays
            assert store.full_state().service_ports == before.service_ports
        msg = store.errors[key]
        assert isinstance(msg, str) and "\n" not in msg and "internal error" not in msg
    elif name:
        # Accepted: only JSON data gets this far (a resourceVersion, which
        # marks the API server's decoded JSON, is not set here).
        assert is_json(bad)
    state = store.full_state()
    state.to_plan_json()
    for msg in store.error_messages():
        assert "\n" not in msg
    store.replace(kind, [bad])  # type: ignore[list-item]
    store.delete(kind, bad)  # type: ignore[arg-type]
    assert store.internal_errors == 0


@fuzz(800)
@given(kind=st.sampled_from(sorted(TEMPLATES)), only_json=st.booleans(), data=st.data())
def test_fuzz_single_objects_through_the_store(kind: str, only_json: bool,
                                               data: st.DataObject) -> None:
    """Structured edits (hypothesis shrinks a failure to the smallest one)."""
    check_one(kind, data.draw(mutated(kind, json_values if only_json else any_values)))


@fuzz(1900)
@given(kind=st.sampled_from(sorted(TEMPLATES)), edits=st.integers(1, 4),
       case=st.integers(0, 2 ** 32))
def test_fuzz_random_edits_through_the_store(kind: str, edits: int, case: int) -> None:
    """Many cheap random edits: one drawn number seeds them (printed on failure)."""
    check_one(kind, random_edits(random.Random(case), TEMPLATES[kind](), edits))
