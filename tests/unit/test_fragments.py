"""The per-Service fragment cache the rule-based modes share."""

from __future__ import annotations

from pyagent.dataplanes.fragments import FragmentCache


def render(_svc, ports):
    if "bad" in ports:
        raise ValueError("cannot render")
    return list(ports)


def test_a_failed_render_keeps_the_last_good_fragment() -> None:
    cache: FragmentCache[list] = FragmentCache()
    a, b = ("ns", "a"), ("ns", "b")
    assert cache.update({a: ("a1",), b: ("b1",)}, True, render) == {a: None, b: None}
    status = cache.update({a: ("bad",)}, False, render)
    assert status[a] == "render failed: cannot render"
    assert list(cache.in_order()) == [["a1"], ["b1"]]  # a keeps its previous fragment


def test_empty_ports_and_full_syncs_remove_services() -> None:
    cache: FragmentCache[list] = FragmentCache()
    a, b, c = ("ns", "a"), ("ns", "b"), ("ns", "c")
    cache.update({c: ("c1",), a: ("a1",), b: ("b1",)}, True, render)
    assert list(cache.in_order()) == [["a1"], ["b1"], ["c1"]]  # sorted by Service
    cache.update({a: ()}, False, render)
    assert a not in cache and len(cache) == 2
    cache.update({b: ("b2",)}, True, render)  # c not named by a full sync: gone
    assert list(cache.in_order()) == [["b2"]]
