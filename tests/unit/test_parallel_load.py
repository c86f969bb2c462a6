"""parallel_load's decisions, with the loads faked: the maps are pinned
first only when some pin is missing or incompatible (the TC maps only when
there are TC programs), both loads then run at once without waiting for
anyone, and a failed pinning falls back to the loads one after the other
(with a warning) instead of failing the start."""

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
        self.closed: list[str] = []
        self.lock = threading.Lock()

        def loader(what: str):  # type: ignore[no-untyped-def]
            def load(*_a, **kw):  # type: ignore[no-untyped-def]
                with self.lock:
                    self.calls.append(f"{what} in {threading.current_thread().name}")
                self.release.wait(5)
                return Loaded(self, what, kw)
            return load

        def pin_maps(*_a, tc_maps: bool):  # type: ignore[no-untyped-def]
            self.calls.append(f"pin_maps tc_maps={tc_maps}")
            if pin_error is not None:
                raise pin_error

        monkeypatch.setattr(tc, "pins_ready", lambda *_a, **_kw: ready)
        monkeypatch.setattr(tc, "pin_maps", pin_maps)
        monkeypatch.setattr(tc, "load_out_of_process", loader("tc"))
        monkeypatch.setattr(socket_lb, "load_out_of_process", loader("sock"))

    def wait_calls(self, n: int) -> None:
        for _ in range(500):
            with self.lock:
                if len(self.calls) >= n:
                    return
            threading.Event().wait(0.01)


class Loaded:
    def __init__(self, fake: Fake, what: str, kw: dict) -> None:
        self.fake, self.what, self.kw = fake, what, kw

    def close(self) -> None:
        self.fake.closed.append(self.what)


def start(with_tc: bool = True) -> parallel_load.Loads:
    return parallel_load.start("/x", socket_lb.Capacities(),
                               tc.TcCapacities() if with_tc else None, xdp=True, pods=False)


@pytest.mark.parametrize("ready", [False, True])
def test_both_loads_run_beside_the_caller(monkeypatch, ready: bool) -> None:
    fake = Fake(monkeypatch, ready)
    loads = start()
    assert loads.pinned and loads.has_tc
    fake.wait_calls(2 if ready else 3)  # started on their own threads, before anyone waits
    assert fake.calls[:0 if ready else 1] == ([] if ready else ["pin_maps tc_maps=True"])
    assert sorted(fake.calls[0 if ready else 1:]) == ["sock in sock-lb-load", "tc in tc-load"]
    fake.release.set()
    assert loads.socket_lb().what == "sock"
    tc_lb = loads.tc()
    assert tc_lb.what == "tc" and tc_lb.kw == {"xdp": True, "pods": False}
    loads.wait()


def test_without_tc_only_the_socket_lb_maps_are_pinned(monkeypatch) -> None:
    fake = Fake(monkeypatch, ready=False)
    fake.release.set()
    loads = start(with_tc=False)
    assert not loads.has_tc
    loads.wait()
    assert fake.calls == ["pin_maps tc_maps=False", "sock in sock-lb-load"]


def test_a_failed_pinning_loads_one_after_the_other(monkeypatch, caplog) -> None:
    fake = Fake(monkeypatch, ready=False, pin_error=RuntimeError("loading the pinned maps "
                                                                 "failed: clang"))
    with caplog.at_level(logging.WARNING):
        loads = start()
    assert not loads.pinned
    assert "one after the other" in caplog.text and "clang" in caplog.text
    fake.wait_calls(2)
    threading.Event().wait(0.1)
    assert fake.calls == ["pin_maps tc_maps=True", "sock in sock-lb-load"]  # TC waits for it
    fake.release.set()
    loads.wait()
    assert fake.calls[-1] == "tc in tc-load"


def test_discard_waits_and_closes_what_is_not_live(monkeypatch) -> None:
    fake = Fake(monkeypatch, ready=True)
    loads = start()
    fake.release.set()
    live = loads.socket_lb()
    loads.discard(live=(live,))
    assert fake.closed == ["tc"]


def test_a_failed_load_reaches_the_waiter(monkeypatch) -> None:
    fake = Fake(monkeypatch, ready=True)
    fake.release.set()
    monkeypatch.setattr(tc, "load_out_of_process",
                        lambda *_a, **_kw: (_ for _ in ()).throw(RuntimeError("verifier")))
    loads = start()
    assert loads.socket_lb().what == "sock"
    with pytest.raises(RuntimeError, match="verifier"):
        loads.wait()
    loads.discard()  # and a failed start's cleanup does not raise
    assert fake.closed == ["sock"]
