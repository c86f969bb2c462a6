"""SyncRunner scheduling with a fake clock: no real sleeping."""

from __future__ import annotations

import threading
import time

import pytest

from pyagent.node.runner import SKIPPED, SyncRunner


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._cond = threading.Condition()

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        with self._cond:
            self.t += seconds
            self._cond.notify_all()

    def wait(self, wake: threading.Event, timeout: float) -> None:
        deadline = self.t + timeout
        with self._cond:
            while not wake.is_set() and self.t < deadline:
                self._cond.wait(0.001)


class Recorder:
    """A sync_fn that records (clock time, full) and returns scripted results."""

    def __init__(self, clock: FakeClock, results: list[object] | None = None) -> None:
        self.clock = clock
        self.calls: list[tuple[float, bool]] = []
        self.results = list(results or [])

    def __call__(self, *, full: bool) -> bool | None:
        self.calls.append((self.clock.now(), full))
        result = self.results.pop(0) if self.results else True
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[return-value]


def make(
    results: list[object] | None = None, **kw: float
) -> tuple[SyncRunner, Recorder, FakeClock]:
    clock = FakeClock()
    rec = Recorder(clock, results)
    args = {"min_interval": 1.0, "max_interval": 30.0, "retry_backoff": 2.0} | kw
    return SyncRunner(rec, clock=clock, **args), rec, clock


def test_first_sync_is_immediate_and_full() -> None:
    runner, rec, clock = make()
    assert runner.run_pending() == clock.t + 30.0
    assert rec.calls == [(1000.0, True)]


def test_requests_are_coalesced_within_min_interval() -> None:
    runner, rec, clock = make()
    runner.run_pending()
    for _ in range(5):
        runner.request()
        clock.advance(0.1)
        runner.run_pending()
    assert len(rec.calls) == 1  # burst merged, still inside min_interval
    clock.advance(0.5)
    runner.run_pending()
    assert rec.calls[1] == (pytest.approx(1001.0), False)
    runner.run_pending()
    assert len(rec.calls) == 2  # the merged burst ran once


def test_request_after_quiet_period_runs_at_once() -> None:
    runner, rec, clock = make()
    runner.run_pending()
    clock.advance(5.0)
    runner.request()
    runner.run_pending()
    assert rec.calls[-1] == (1005.0, False)


def test_periodic_full_sync_every_max_interval() -> None:
    runner, rec, clock = make()
    runner.run_pending()
    clock.advance(29.9)
    runner.run_pending()
    assert len(rec.calls) == 1
    clock.advance(0.1)
    assert runner.run_pending() == pytest.approx(1060.0)
    assert rec.calls[-1] == (pytest.approx(1030.0), True)


def test_request_full_forces_full_flag() -> None:
    runner, rec, clock = make()
    runner.run_pending()
    clock.advance(2)
    runner.request(full=True)
    runner.run_pending()
    assert rec.calls[-1] == (1002.0, True)


def test_failures_retry_with_capped_exponential_backoff() -> None:
    runner, rec, clock = make(
        [False, RuntimeError("boom"), False, False, False, True], max_interval=10.0
    )
    expected_delays = [2.0, 4.0, 8.0, 10.0, 10.0]
    runner.run_pending()
    for delay in expected_delays:
        due = runner.next_due()
        assert due - clock.t == pytest.approx(delay)
        runner.request()  # requests do not bypass the backoff
        clock.advance(delay - 0.01)
        runner.run_pending()
        clock.advance(0.01)
        runner.run_pending()
    assert [full for _, full in rec.calls] == [True] * 6  # retries are full syncs
    assert runner.failures == 0
    assert runner.next_due() == pytest.approx(clock.t + 10.0)  # back to periodic


def test_sync_exception_is_contained_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    runner, rec, clock = make([ValueError("bad map")])
    runner.run_pending()
    assert runner.failures == 1
    assert "sync failed" in caplog.text and "bad map" in caplog.text


def test_none_return_counts_as_success() -> None:
    runner, rec, clock = make([None])
    runner.run_pending()
    assert runner.failures == 0


def test_min_interval_respected_after_success_with_pending_request() -> None:
    runner, rec, clock = make(min_interval=2.0)
    runner.run_pending()
    runner.request()
    assert runner.next_due() == pytest.approx(1002.0)


def test_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError):
        SyncRunner(lambda full: True, min_interval=5, max_interval=1)
    with pytest.raises(ValueError):
        SyncRunner(lambda full: True, min_interval=0, max_interval=1, retry_backoff=0)


def wait_for(pred, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_thread_loop_with_fake_clock() -> None:
    runner, rec, clock = make()
    runner.start()
    try:
        wait_for(lambda: len(rec.calls) == 1)
        runner.request()
        runner.request()
        clock.advance(1.0)
        wait_for(lambda: len(rec.calls) == 2)
        assert rec.calls[1] == (1001.0, False)
        clock.advance(30.0)
        wait_for(lambda: len(rec.calls) == 3)
        assert rec.calls[2][1] is True
    finally:
        runner.stop()
    assert runner._thread is not None and not runner._thread.is_alive()


def test_stop_wakes_a_waiting_loop_with_real_clock() -> None:
    calls: list[bool] = []
    runner = SyncRunner(lambda full: calls.append(full), min_interval=0.0, max_interval=3600)
    runner.start()
    wait_for(lambda: calls == [True])
    runner.request()
    wait_for(lambda: calls == [True, False])
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 1.0


def test_a_skipped_sync_does_not_hold_the_first_real_one_back() -> None:
    # Before the store is listed the agent's sync does nothing (SKIPPED): the
    # sync asked for once it is listed runs at once, and is still the full one.
    runner, rec, clock = make([SKIPPED, SKIPPED])
    runner.run_pending()
    clock.advance(0.3)
    runner.request()
    runner.run_pending()
    clock.advance(0.2)
    runner.request()
    runner.run_pending()
    assert rec.calls == [(1000.0, True), (1000.3, True), (1000.5, True)]
    assert runner.next_due() == 1000.5 + 30.0  # the real one counts


def test_a_skipped_sync_waits_for_a_request_instead_of_spinning() -> None:
    # Retrying a SKIPPED sync at once would loop, taking the GIL from the
    # source that is listing; the next try comes with the next write (a
    # request), or max_interval later if none comes.
    runner, rec, clock = make([SKIPPED, SKIPPED, SKIPPED])
    runner.run_pending()
    assert runner.next_due() == 1000.0 + 30.0
    runner.run_pending()
    clock.advance(5.0)
    runner.run_pending()
    assert rec.calls == [(1000.0, True)]
    runner.request()
    assert runner.next_due() == float("-inf")  # nothing synced yet: at once
    runner.run_pending()
    clock.advance(30.0)
    runner.run_pending()  # no request: the periodic try after the skip
    assert rec.calls == [(1000.0, True), (1005.0, True), (1035.0, True)]
    runner.request()
    runner.run_pending()  # a real sync, full: the skipped ones' fullness is kept
    assert rec.calls[-1] == (1035.0, True) and len(rec.calls) == 4
    assert runner.next_due() == 1035.0 + 30.0


def test_a_skip_after_a_real_sync_keeps_its_schedule() -> None:
    runner, rec, clock = make([True, SKIPPED])
    runner.run_pending()
    clock.advance(31.0)
    runner.run_pending()  # periodic, SKIPPED (say the store relists)
    assert runner.next_due() == 1031.0 + 30.0  # not due again at once
    runner.request()
    assert runner.next_due() == 1000.0 + 1.0  # the first sync's min_interval: at once
