"""Endpoint.make, the parser's fast constructor, builds exactly what
Endpoint(...) builds, and the result stays frozen."""

from __future__ import annotations

import dataclasses

import pytest

from pyagent.core.model import Endpoint


def test_make_is_the_constructor() -> None:
    # every field a value of its own, so a field set into another slot shows
    values = ("10.1.2.3", 8080, False, True, True, "node-7", frozenset({"zone-a"}),
              frozenset({"node-7", "node-8"}), True)
    assert len(values) == len(dataclasses.fields(Endpoint))
    made, built = Endpoint.make(*values), Endpoint(*values)
    assert made == built and hash(made) == hash(built)
    assert dataclasses.astuple(made) == values
    assert type(made) is Endpoint


def test_made_endpoints_stay_frozen() -> None:
    ep = Endpoint.make("10.1.2.3", 80, True, True, False, None, frozenset(), frozenset(), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep.ready = False  # type: ignore[misc]
