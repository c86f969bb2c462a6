"""The removed-backend janitor: one worker, removals coalesced while it runs
(a rolling update must not start a thread and a map walk per sync)."""

from __future__ import annotations

import threading

from pyagent.dataplanes.ebpf.frontends import Backend
from pyagent.dataplanes.ebpf.sockets import BackendJanitor


def _backend(i: int) -> Backend:
    return Backend(f"10.0.{i // 256}.{i % 256}", 8080, 17)


def test_removals_during_a_pass_wait_and_go_together_in_one_thread() -> None:
    j = BackendJanitor(maps=None)
    release = threading.Event()
    batches: list[list[Backend]] = []
    workers: set[int] = set()

    def run(backends: list[Backend]) -> None:  # a slow pass: walks namespaces and maps
        workers.add(threading.get_ident())
        batches.append(list(backends))
        release.wait(10)

    j._run = run  # type: ignore[method-assign]
    j.removed([_backend(0)])
    for i in range(1, 200):
        j.removed([_backend(i)])
    alive = [t for t in threading.enumerate() if t.name == "backend-janitor"]
    assert len(alive) == 1
    release.set()
    j.wait(10)
    assert [b for batch in batches for b in batch] == [_backend(i) for i in range(200)]
    assert len(batches) <= 3 and len(workers) == 1, [len(b) for b in batches]

    # idle again: the next removal starts a worker of its own, and wait() sees it through
    j.removed([_backend(500)])
    j.wait(10)
    assert batches[-1] == [_backend(500)]


def test_wait_returns_at_once_when_nothing_was_removed() -> None:
    j = BackendJanitor(maps=None)
    before = {t.ident for t in threading.enumerate()}
    j.removed([])
    j.wait(0.1)
    assert {t.ident for t in threading.enumerate()} <= before
