"""Endpoint selection: worked examples and hypothesis properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent.core.model import Endpoint
from pyagent.core.selection import categorize, dedupe, topology_mode

NODE, ZONE = "node-a", "zone-a"


def ep(n: int, *, ready: bool = True, serving: bool = True, terminating: bool = False,
       local: bool = False, zones: tuple[str, ...] = (), nodes: tuple[str, ...] = ()) -> Endpoint:
    return Endpoint(f"10.0.0.{n}", 80, ready, serving, terminating, NODE if local else "other",
                    frozenset(zones), frozenset(nodes), local)


def addrs(eps: tuple[Endpoint, ...] | None) -> list[str] | None:
    return None if eps is None else [e.addr for e in eps]


def test_ready_first_then_terminating_fallback_per_set() -> None:
    eps = [ep(0), ep(2, ready=False, terminating=True, local=True),
           ep(3, ready=False, serving=False, terminating=True, local=True)]
    sel = categorize(eps, uses_cluster=True, uses_local=True, node_name=NODE)
    assert addrs(sel.cluster) == ["10.0.0.0:80"]
    assert addrs(sel.local) == ["10.0.0.2:80"]  # local falls back on its own
    assert addrs(sel.all) == ["10.0.0.0:80", "10.0.0.2:80"]
    assert sel.has_any


def test_only_remote_endpoints_still_count_as_any() -> None:
    sel = categorize([ep(1)], uses_cluster=False, uses_local=True, node_name=NODE)
    assert sel.cluster is None and sel.local == () and sel.all == () and sel.has_any


def test_no_usable_endpoint_anywhere() -> None:
    sel = categorize([ep(1, ready=False, serving=False, terminating=True)],
                     uses_cluster=True, uses_local=True)
    assert sel.cluster == () and sel.local == () and not sel.has_any


def test_no_endpoint_data_versus_an_empty_list() -> None:
    # None: no slice carries the port, nothing to categorize. []: the sets the
    # service uses exist and are empty.
    sel = categorize(None, uses_cluster=True, uses_local=True)
    assert (sel.cluster, sel.local, sel.all, sel.has_any) == (None, None, (), False)
    sel = categorize([], uses_cluster=False, uses_local=True)
    assert (sel.cluster, sel.local, sel.all, sel.has_any) == (None, (), (), False)


def test_zone_hints_need_every_ready_endpoint_hinted_and_one_for_our_zone() -> None:
    hinted = [ep(1, zones=("zone-a",)), ep(2, zones=("zone-b",)),
              ep(3, ready=False, serving=False)]  # unready endpoints' hints do not matter
    sel = categorize(hinted, uses_cluster=True, uses_local=False, zone=ZONE)
    assert addrs(sel.cluster) == ["10.0.0.1:80"]
    assert topology_mode(hinted, NODE, "zone-c", False) is None
    assert topology_mode(hinted, NODE, "", False) is None
    assert topology_mode([*hinted, ep(4)], NODE, ZONE, False) is None


def test_node_hints_only_with_the_gate() -> None:
    eps = [ep(1, zones=("zone-a",), nodes=(NODE,)), ep(2, zones=("zone-a",), nodes=("x",))]
    on = categorize(eps, uses_cluster=True, uses_local=False, node_name=NODE, zone=ZONE,
                    prefer_same_node=True)
    off = categorize(eps, uses_cluster=True, uses_local=False, node_name=NODE, zone=ZONE)
    assert addrs(on.cluster) == ["10.0.0.1:80"]
    assert addrs(off.cluster) == ["10.0.0.1:80", "10.0.0.2:80"]


def test_local_set_ignores_topology_and_all_merges() -> None:
    eps = [ep(1, zones=("zone-b",), local=True), ep(2, zones=("zone-a",))]
    sel = categorize(eps, uses_cluster=True, uses_local=True, node_name=NODE, zone=ZONE)
    assert addrs(sel.cluster) == ["10.0.0.2:80"]
    assert addrs(sel.local) == ["10.0.0.1:80"]
    assert addrs(sel.all) == ["10.0.0.1:80", "10.0.0.2:80"]


def test_dedupe_prefers_non_terminating_copy_in_any_order() -> None:
    old = ep(1, ready=False, serving=False, terminating=True)
    new = ep(1, local=True)
    assert dedupe([old, new]) == [new] == dedupe([new, old])


# --- properties ---------------------------------------------------------------

endpoints = st.lists(
    st.builds(
        lambda n, port, ready, serving, term, local, zones, nodes: Endpoint(
            f"10.0.0.{n}", port, ready, serving, term, NODE if local else "other",
            frozenset(zones), frozenset(nodes), local),
        st.integers(0, 12), st.sampled_from([80, 8080]), st.booleans(), st.booleans(),
        st.booleans(), st.booleans(),
        st.sets(st.sampled_from(["zone-a", "zone-b"]), max_size=2),
        st.sets(st.sampled_from([NODE, "node-b"]), max_size=2)),
    max_size=14)
flags = st.fixed_dictionaries({
    "uses_cluster": st.booleans(), "uses_local": st.booleans(),
    "zone": st.sampled_from(["", "zone-a", "zone-b"]), "prefer_same_node": st.booleans()})


@settings(max_examples=300, deadline=None)
@given(endpoints, flags, st.randoms(use_true_random=False))
def test_selection_invariants(eps: list[Endpoint], kw: dict, rnd: random.Random) -> None:
    eps = dedupe(eps)
    sel = categorize(eps, node_name=NODE, **kw)
    chosen = [*(sel.cluster or ()), *(sel.local or ()), *sel.all]
    # Subsets of the input, and never an endpoint that is neither ready nor serving.
    assert all(e in eps for e in chosen)
    assert all(e.ready or (e.serving and e.terminating) for e in chosen)
    assert all(e.is_local for e in sel.local or ())
    assert set(sel.all) == set(sel.cluster or ()) | set(sel.local or ())
    assert sel.has_any == any(e.ready or (e.serving and e.terminating) for e in eps)
    assert (sel.cluster is None) == (not kw["uses_cluster"])
    assert (sel.local is None) == (not kw["uses_local"])
    # Ready endpoints are always preferred within a set.
    for chosen_set in (sel.cluster, sel.local):
        if chosen_set and any(not e.ready for e in chosen_set):
            assert all(not e.ready for e in chosen_set)
    # Order-independent, duplicates included.
    shuffled = list(eps)
    rnd.shuffle(shuffled)
    assert categorize(shuffled, node_name=NODE, **kw) == sel


@settings(max_examples=200, deadline=None)
@given(endpoints, st.randoms(use_true_random=False))
def test_dedupe_is_order_independent(eps: list[Endpoint], rnd: random.Random) -> None:
    shuffled = list(eps)
    rnd.shuffle(shuffled)
    assert sorted(dedupe(eps), key=repr) == sorted(dedupe(shuffled), key=repr)
    assert len({(e.ip, e.port) for e in dedupe(eps)}) == len(dedupe(eps))
