"""parallel_load's decisions, with the loads faked: the maps are pinned
first only when some pin is missing or incompatible, the TC load then runs
without waiting for anyone, and a failed pinning falls back to the load
one after the other (with a warning) instead of failing the start."""

from __future__ import annotations

import logging
import threading

import pytest

from pyagent.dataplanes.ebpf import parallel_load, socket_lb, tc


class Fake:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, ready: bool,
                 pin_error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self.closed = False

        def load(*_a, **_kw):  # type: ignore[no-untyped-def]
            self.calls.append(f"load in {threading.current_thread().name}")
            self.release.wait(5)
            return self

        def pin_maps(*_a):  # type: ignore[no-untyped-def]
            self.calls.append("pin_maps")
            if pin_error is not None:
                raise pin_error

        monkeypatch.setattr(tc, "pins_ready", lambda *_a: ready)
        monkeypatch.setattr(tc, "pin_maps", pin_maps)
        monkeypatch.setattr(tc, "load_out_of_process", load)

    def close(self) -> None:
        self.closed = True


def start() -> parallel_load.Loaded:
    return parallel_load.start_tc_load("/x", socket_lb.Capacities(), tc.TcCapacities(),
                                       xdp=False)


@pytest.mark.parametrize("ready", [False, True])
def test_the_tc_load_runs_beside_the_caller(monkeypatch, ready: bool) -> None:
    fake = Fake(monkeypatch, ready)
    loaded = start()
    for _ in range(100):  # the load started on its own thread, before anyone waits
        if len(fake.calls) == (1 if ready else 2):
            break
        threading.Event().wait(0.01)
    assert fake.calls == ([] if ready else ["pin_maps"]) + ["load in tc-load"]
    fake.release.set()
    assert loaded() is fake


def test_a_failed_pinning_loads_after_the_socket_lb(monkeypatch, caplog) -> None:
    fake = Fake(monkeypatch, ready=False, pin_error=RuntimeError("loading the pinned maps "
                                                                 "failed: clang"))
    fake.release.set()
    with caplog.at_level(logging.WARNING):
        loaded = start()
    assert fake.calls == ["pin_maps"]  # nothing loads until the caller asks
    assert "TC programs load after the socket LB" in caplog.text and "clang" in caplog.text
    assert loaded() is fake
    assert fake.calls == ["pin_maps", f"load in {threading.current_thread().name}"]


def test_discard_waits_and_closes(monkeypatch) -> None:
    fake = Fake(monkeypatch, ready=True)
    loaded = start()
    fake.release.set()
    parallel_load.discard(loaded)
    assert fake.closed


def test_a_failed_load_reaches_the_waiter(monkeypatch) -> None:
    Fake(monkeypatch, ready=True)
    monkeypatch.setattr(tc, "load_out_of_process",
                        lambda *_a, **_kw: (_ for _ in ()).throw(RuntimeError("verifier")))
    loaded = start()
    with pytest.raises(RuntimeError, match="verifier"):
        loaded()
    parallel_load.discard(loaded)  # and a failed start's cleanup does not raise
