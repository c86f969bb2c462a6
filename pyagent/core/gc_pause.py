"""The cyclic garbage collector around bulk work. Loading a large cluster
allocates millions of containers that live on (the store's parsed objects);
the collector would scan them again and again as they pass through its
generations, about a third of a 100,000-endpoint list's ingestion. Nothing
in that data forms cycles (refcounting frees it), so the collector is
paused while it is built, and what survives a list is frozen (gc.freeze)
rather than scanned. node/heap.release_free_memory collects everything
once after the next sync and freezes what survives again."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_frozen = False  # a bulk load froze objects that were never collected since


@contextmanager
def gc_paused() -> Iterator[None]:
    """No collection while the block runs (the block's garbage is collected
    later, as usual)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def bulk_load() -> Iterator[None]:
    """gc_paused for data that stays: on the way out every object alive is
    frozen, so the collections that follow scan only what is new since."""
    global _frozen
    with gc_paused():
        try:
            yield
        finally:
            gc.freeze()
            _frozen = True


def take_frozen() -> bool:
    """Whether a bulk load froze objects since the last call: the caller
    then runs a full collection (garbage cycles frozen with the data)."""
    global _frozen
    frozen, _frozen = _frozen, False
    return frozen
