"""Maglev table generation (pyagent/dataplanes/ebpf/maglev.py), no root."""

from __future__ import annotations

import pytest

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import maglev as mg


def disruption(old, new) -> float:
    """Fraction of table entries whose backend differs."""
    return sum(a != b for a, b in zip(old, new, strict=True)) / len(old)


def backends(n: int, first_id: int = 1) -> dict[int, str]:
    return {first_id + i: f"10.244.{i // 200}.{i % 200 + 10}:8080" for i in range(n)}


def test_table_size_is_the_header_prime():
    assert mg.M == L.MAGLEV_M == 16381
    assert all(mg.M % d for d in range(2, int(mg.M ** 0.5) + 1))


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100])
def test_every_entry_is_filled_with_a_backend(n):
    bes = backends(n)
    table = mg.build_table(bes)
    assert len(table) == mg.M
    assert set(table) == set(bes)


@pytest.mark.parametrize("n", [2, 10, 37, 100])
def test_shares_are_near_equal(n):
    s = mg.shares(mg.build_table(backends(n)))
    assert len(s) == n
    assert max(s.values()) - min(s.values()) <= 1  # M/N +- 1 by construction
    assert max(s.values()) / min(s.values()) <= 1.03


def test_no_backends_gives_an_empty_table():
    assert set(mg.build_table({})) == {0}


def test_order_of_backends_does_not_matter():
    bes = backends(10)
    assert mg.build_table(bes) == mg.build_table(list(reversed(list(bes.items()))))


def test_placement_follows_names_not_ids():
    a = mg.build_table(backends(10, first_id=1))
    b = mg.build_table(backends(10, first_id=101))
    assert [x + 100 for x in a] == b


@pytest.mark.parametrize("n", [5, 10, 50])
def test_removing_one_backend_moves_about_one_nth(n):
    bes = backends(n)
    old = mg.build_table(bes)
    gone = sorted(bes)[n // 2]
    new = mg.build_table({i: name for i, name in bes.items() if i != gone})
    # every entry of the removed backend moves ...
    assert gone not in new
    moved = disruption(old, new)
    # ... and little else: minimal disruption is exactly 1/n
    assert 1 / n <= moved <= 1.5 / n, moved
    # entries that did not belong to the removed backend mostly stay
    kept = sum(1 for a, b in zip(old, new, strict=True) if a != gone and a == b)
    assert kept / sum(1 for a in old if a != gone) > 0.9


def test_adding_one_backend_moves_about_one_nth():
    bes = backends(10)
    old = mg.build_table(bes)
    more = {**bes, 99: "10.244.9.9:8080"}
    new = mg.build_table(more)
    assert 1 / 11 <= disruption(old, new) <= 1.5 / 11


def test_permutation_is_valid_for_the_prime():
    offset, skip = mg.permutation("10.0.0.1:80")
    assert 0 <= offset < mg.M and 1 <= skip < mg.M
