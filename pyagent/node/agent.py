"""The node agent: source -> store -> sync runner -> dataplane.

Sources write into the store from their own threads and only *request* a
sync; the runner coalesces requests (minSyncPeriod), forces a full resync
every syncPeriod and retries failures with backoff. Nothing is removed from
the dataplane before every kind has been listed once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pyagent.core import gc_pause
from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.sink import Kind, ObjectSink
from pyagent.core.state import ServicePortState
from pyagent.core.store import ServiceStore
from pyagent.dataplanes.base import Dataplane, StagedSetup
from pyagent.node.heap import release_free_memory
from pyagent.node.runner import SKIPPED, Skipped, SyncRunner
from pyagent.observe.report import Refused, SyncObserver, SyncReport

log = logging.getLogger(__name__)


class AgentSink:
    """Writes into the store under the agent's lock, then asks for a sync."""

    def __init__(self, store: ObjectSink, lock: threading.Lock,
                 notify: Callable[[], None]) -> None:
        self.store, self.lock, self.notify = store, lock, notify
        self.accepts_pages = getattr(store, "accepts_pages", False)

    def replace(self, kind: Kind, objects: list[dict], **kw: Any) -> None:
        with self.lock:
            self.store.replace(kind, objects, **kw)
        self.notify()

    def report(self, problems: Sequence[str]) -> None:
        with self.lock:
            self.store.report(problems)

    def upsert(self, kind: Kind, obj: dict) -> None:
        with self.lock:
            self.store.upsert(kind, obj)
        self.notify()

    def delete(self, kind: Kind, obj: dict) -> None:
        with self.lock:
            self.store.delete(kind, obj)
        self.notify()


class Agent:
    def __init__(self, config: NodeConfig, dataplane: Dataplane,
                 observers: Sequence[SyncObserver] = ()) -> None:
        self.config = config
        self.dataplane = dataplane
        self.store = ServiceStore(config)
        self.lock = threading.Lock()  # the store is written by sources, read by syncs
        self.sink = AgentSink(self.store, self.lock, self._queued)
        self.runner = SyncRunner(self.sync, min_interval=config.min_sync_period,
                                 max_interval=config.sync_period)
        self.observers = tuple(observers)  # they get a SyncReport after each sync
        self.errors: dict[ServiceKey, str] = {}
        self.synced_once = threading.Event()
        self._pruned = False
        self._triggers: list[float] = []  # trigger times of a failed sync, to retry

    def _queued(self) -> None:
        for obs in self.observers:
            obs.on_queued()
        self.runner.request()

    def _all_states(self) -> dict[ServiceKey, tuple[ServicePortState, ...]]:
        grouped: dict[ServiceKey, list[ServicePortState]] = defaultdict(list)
        for sps in self.store.full_state().service_ports:
            grouped[(sps.service.namespace, sps.service.name)].append(sps)
        return {k: tuple(v) for k, v in grouped.items()}

    def sync(self, full: bool) -> bool | Skipped:
        """One sync; returns False to have the runner retry with backoff,
        SKIPPED before every kind was listed (never prune from a partial
        view)."""
        with self.lock:
            if not self.store.synced():
                return SKIPPED
            triggers = self._triggers + self.store.take_trigger_times()
            self._triggers = []
            changed = self.store.take_changes()
            full = full or not self._pruned
            if full:
                states = self._all_states()
            else:
                states = {k: self.store.state_for(k) for k in changed | set(self.errors)}
        started = time.monotonic()
        if len(states) >= 1000:  # progress for long (first) syncs
            log.info("programming %d services (%s sync)...", len(states),
                     "full" if full else "partial")
        try:
            status = self.dataplane.sync(states, full=full)
        except Exception:
            log.exception("dataplane sync failed; will retry with a full sync")
            self._pruned = False
            self._triggers = triggers + self._triggers
            for obs in self.observers:
                obs.on_sync_failed()
            return False
        self._pruned = True
        if len(states) >= 1000:
            log.info("programmed %d services in %.2f s (%d refused)", len(states),
                     time.monotonic() - started, sum(1 for e in status.values() if e))
        if gc_pause.take_frozen() or len(states) >= 1000:
            release_free_memory()  # also collects what a list froze (gc_pause)
        for svc, err in status.items():
            if err:
                if self.errors.get(svc) != err:
                    log.error("service %s/%s not programmed: %s", *svc, err)
                self.errors[svc] = err
            else:
                self.errors.pop(svc, None)
        for svc in [s for s in self.errors if s in states and not states[s]]:
            self.errors.pop(svc, None)
        if full:  # Services that went while refused
            for svc in [s for s in self.errors if s not in states]:
                self.errors.pop(svc, None)
        report = self._report(full, time.monotonic() - started, states, triggers)
        for obs in self.observers:
            obs.on_synced(report)
        self.synced_once.set()
        return True

    def _report(self, full: bool, duration: float,
                states: dict[ServiceKey, tuple[ServicePortState, ...]],
                triggers: list[float]) -> SyncReport:
        with self.lock:  # what changed while the dataplane worked is pending now
            store = self.store
            by_kind: dict[str, int] = {}
            invalid: dict[ServiceKey, str] = {}
            for (kind, ns, name), msg in store.errors.items():
                by_kind[kind] = by_kind.get(kind, 0) + 1
                if kind == "Service":
                    invalid[(ns, name)] = msg
            return SyncReport(
                full=full, duration=duration, finished=time.time(), states=states,
                trigger_times=tuple(triggers), errors=dict(self.errors),
                refused=self.refused(), invalid_services=invalid,
                object_errors=tuple(store.error_messages()),
                object_error_counts=by_kind, source_problems=tuple(store.source_problems),
                pending=store.pending(), totals=store.totals(), node=store.node())

    def refused(self) -> tuple[Refused, ...]:
        """Services not programmed (by namespace/name), with why: what
        `pyagent status` lists and pyagent_services_refused counts."""
        return tuple(Refused("/".join(svc), getattr(err, "reason", "error"),
                             getattr(err, "map", ""), str(err))
                     for svc, err in sorted(self.errors.items()))

    def prepare(self) -> bool:
        """Compute every Service's state ahead of the first sync (it is cached
        until an object changes); False, doing nothing, until every kind was
        listed. Meant for the wait while the dataplane is set up."""
        with self.lock:
            if not self.store.synced():
                return False
            self.store.warm()
            return True

    def start(self) -> None:
        """Set the dataplane up and start syncing; with a staged dataplane
        (its programs load after setup() returns, while the first sync
        fills its maps) return once they are loaded, raising if one failed."""
        self.dataplane.setup()
        self.runner.start()
        if isinstance(self.dataplane, StagedSetup):
            try:
                self.dataplane.wait_loaded()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        self.runner.stop()
        self.dataplane.close()

