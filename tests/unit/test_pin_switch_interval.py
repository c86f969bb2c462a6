"""While parallel_load pins the maps, the interpreter switches threads
often (so that each bpf() call gets the GIL back from the parsing thread at
once), and the interval is the caller's again afterwards, also when
pinning fails."""

from __future__ import annotations

import sys

import pytest

from pyagent.dataplanes.ebpf import parallel_load, socket_lb, tc


@pytest.fixture
def no_loads(monkeypatch):
    monkeypatch.setattr(tc, "pins_ready", lambda *a, **k: False)
    monkeypatch.setattr(socket_lb, "load_out_of_process", lambda *a, **k: "sock")
    monkeypatch.setattr(tc, "load_out_of_process", lambda *a, **k: "tc")
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield monkeypatch
    sys.setswitchinterval(saved)


def test_pinning_runs_with_a_short_switch_interval(no_loads) -> None:
    seen = []
    no_loads.setattr(tc, "pin_maps", lambda *a, **k: seen.append(sys.getswitchinterval()))
    loads = parallel_load.start("/nonexistent", socket_lb.Capacities(), None)
    assert loads.pinned and loads.socket_lb() == "sock"
    assert seen and seen[0] <= parallel_load.PIN_SWITCH_INTERVAL * 1.01
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_the_interval_comes_back_when_pinning_fails(no_loads) -> None:
    def fail(*a, **k):
        raise OSError("no bpffs")
    no_loads.setattr(tc, "pin_maps", fail)
    loads = parallel_load.start("/nonexistent", socket_lb.Capacities(), None)
    assert not loads.pinned and loads.socket_lb() == "sock"
    assert sys.getswitchinterval() == pytest.approx(0.005)
