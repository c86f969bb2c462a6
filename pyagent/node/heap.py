"""The agent process's heap: what glibc and the cyclic collector are told so
that a node agent holding 100k endpoints stays small."""

from __future__ import annotations

import contextlib
import ctypes
import gc

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def limit_malloc_arenas(arenas: int = ARENAS) -> None:
    """Before any thread starts: glibc gives each new thread its own malloc
    arena (up to 8 per core), and a transient peak spread over several of
    them (a list page parsed in a source thread, freed in the sync thread)
    stays resident in each. Python allocates under the GIL, so more arenas
    buy no concurrency here; a 100k-endpoint start peaked 30 MiB higher
    with glibc's default. MALLOC_ARENA_MAX, when set, is the operator's
    choice and wins."""
    import os

    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        with contextlib.suppress(AttributeError):
            libc.mallopt(M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """After a large sync, hand the heap's free pages back to the kernel
    (glibc keeps them otherwise: the RSS would stay at the sync's peak),
    and move what survives out of the collector's sight (gc.freeze): the
    next collections then scan only what changed since, instead of a
    million long-lived objects in the middle of an endpoint change (a
    10-50 ms pause at 100k endpoints). Refcounting still frees them."""
    gc.unfreeze()  # cycles among earlier survivors are collected too
    gc.collect()
    gc.freeze()
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
