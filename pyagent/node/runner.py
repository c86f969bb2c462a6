"""Bounded-frequency sync runner, after kube-proxy's BoundedFrequencyRunner.

Coalesces sync requests (at most one sync per `min_interval`, bursts merged),
forces a full sync every `max_interval`, and retries failed syncs with
exponential backoff capped at `max_interval`. Time comes from an injectable
clock so the scheduling is testable without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Skipped:
    def __repr__(self) -> str:
        return "SKIPPED"


# sync_fn(full=...) returns SKIPPED when it had nothing it could sync yet
# (the store not listed): that does not count as a sync, so the first real
# one is not held back by min_interval; the next try waits for a request (a
# source wrote), or max_interval: retrying at once would spin, and take the
# GIL from the source that is listing.
SKIPPED = Skipped()
# sync_fn(full=...) -> False (or an exception) means failure; SKIPPED, see
# above; anything else success.
SyncFn = Callable[..., bool | None | Skipped]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wait(self, wake: threading.Event, timeout: float) -> None:
        """Block until `wake` is set or `timeout` clock seconds have passed."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, wake: threading.Event, timeout: float) -> None:
        wake.wait(timeout)


class SyncRunner:
    """Runs `sync_fn(full=bool)` on request, periodically and on retry.

    `full` is True for the first sync, the periodic sync, syncs after a
    failure (the kernel state is then unknown) and `request(full=True)`.
    While a failed sync awaits its retry, requests do not bypass the backoff.
    """

    def __init__(
        self,
        sync_fn: SyncFn,
        min_interval: float,
        max_interval: float,
        retry_backoff: float = 1.0,
        clock: Clock | None = None,
        name: str = "sync",
    ) -> None:
        if max_interval <= 0 or not 0 <= min_interval <= max_interval:
            raise ValueError("need 0 <= min_interval <= max_interval and max_interval > 0")
        if retry_backoff <= 0:
            raise ValueError("retry_backoff must be positive")
        self._sync_fn = sync_fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.retry_backoff = retry_backoff
        self._clock = clock or MonotonicClock()
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._requested = False
        self._full_pending = True
        self._last_start: float | None = None
        self._retry_at: float | None = None
        self._skipped_at: float | None = None  # the last try was SKIPPED, then
        self.failures = 0  # consecutive failed syncs

    def request(self, full: bool = False) -> None:
        """Ask for a sync; merged with any other request before it runs."""
        with self._lock:
            self._requested = True
            self._full_pending |= full
        self._wake.set()

    def next_due(self) -> float:
        """Clock time at which the next sync may run."""
        with self._lock:
            return self._due_locked()

    def _due_locked(self) -> float:
        if self._skipped_at is not None and not self._requested:
            return self._skipped_at + self.max_interval
        if self._last_start is None:
            return float("-inf")
        if self._retry_at is not None:
            return max(self._last_start + self.min_interval, self._retry_at)
        if self._requested:
            return self._last_start + self.min_interval
        return self._last_start + self.max_interval

    def run_pending(self) -> float:
        """Run one sync if one is due now; return when the next one is due."""
        with self._lock:
            now = self._clock.now()
            if now < self._due_locked():
                return self._due_locked()
            periodic = self._last_start is not None and now >= self._last_start + self.max_interval
            full = self._full_pending or periodic
            self._requested = False
            self._full_pending = False
            previous, self._last_start = self._last_start, now
        ok = self._call(full)
        with self._lock:
            if ok is SKIPPED:
                self._last_start, self._skipped_at = previous, now
                self._full_pending |= full
                return self._due_locked()
            self._skipped_at = None
            if ok:
                self.failures = 0
                self._retry_at = None
            else:
                self.failures += 1
                delay = min(self.max_interval, self.retry_backoff * 2 ** (self.failures - 1))
                self._retry_at = self._clock.now() + delay
                self._full_pending = True
            return self._due_locked()

    def _call(self, full: bool) -> bool | Skipped:
        try:
            result = self._sync_fn(full=full)
        except Exception:
            log.exception("%s: sync failed", self._name)
            return False
        if result is SKIPPED:
            return SKIPPED
        ok = result is not False
        if not ok:
            log.warning("%s: sync reported failure", self._name)
        return ok

    def run(self) -> None:
        """Loop until `stop()`; the body of the runner thread."""
        while True:
            # Clear before computing the deadline so a request racing with
            # it still wakes the wait below.
            self._wake.clear()
            with self._lock:
                if self._stopped:
                    return
            due = self.run_pending()
            with self._lock:
                if self._stopped:
                    return
            timeout = due - self._clock.now()
            if timeout > 0:
                self._clock.wait(self._wake, timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the loop; a sync in progress finishes first."""
        with self._lock:
            self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
