"""Kubernetes API server as a source: list + watch of Services, EndpointSlices
(discovery.k8s.io/v1) and this agent's own Node, like client-go's reflector.

Each kind runs in its own thread: list (paged) -> `sink.replace`, then watch
from the list's resourceVersion -> `sink.upsert` / `sink.delete`, following
bookmarks. A watch that ends normally (server timeout) resumes from the last
resourceVersion; 410 Gone and any error lead to a fresh list. Errors are
retried on a short, bounded cadence (0.2 s doubling to 1 s, jittered), reset by
any request that succeeds, so the agent converges within about a second of the
API server answering again; an outage is logged as one line when it starts and
one when it ends, never as tracebacks. Nothing reaches the sink while the API
server is unreachable, so the datapath keeps its last state; the relist
afterwards carries the full current list and the sink computes the diff.

A resourceVersion that goes backwards (the API server restarted on an etcd
restored from a backup) is handled as client-go does: a watch from a version
the server does not have yet fails ("too large resource version"), and the
reflector relists at once; the list replaces everything, so what changed
after the backup is undone in the datapath too, and the new watch starts from
the restored history.

Objects are plain dicts exactly as the API server serializes them (camelCase):
responses are read raw (kube_http), never through the client's snake_case
models. Sink calls are serialized, so a sink need not be thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyagent.core.sink import KINDS, Kind, ObjectSink
from pyagent.sources.kube_client import make_api_client
from pyagent.sources.kube_errors import (
    describe_error,
    older,
    status_message,
    too_large,
    too_large_status,
)
from pyagent.sources.kube_http import getter

log = logging.getLogger(__name__)

# kube-proxy skips Services (and their slices) that another proxy or nobody serves.
DEFAULT_LABEL_SELECTOR = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
# A watch that ends sooner than this without any event is suspect (client-go: "very short watch").
SHORT_WATCH = 1.0
OUTAGE_REMINDER = 60.0  # seconds between warnings while the API server stays away


class Backoff:
    """Bounded exponential backoff: `initial` doubling up to `cap`, each
    delay reduced by up to `jitter` x itself (so `cap` is the longest wait:
    a recovered API server is retried within it). The cap is short because
    a node proxy must converge quickly; the jitter spreads the nodes' retries."""

    def __init__(
        self,
        initial: float = 0.2,
        cap: float = 1.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.cap, self.factor, self.jitter = initial, cap, factor, jitter
        self._rand = rand
        self._steps = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * self.factor**self._steps)
        self._steps += 1
        return base * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        self._steps = 0


class Gone(Exception):
    """410: the resourceVersion or continue token is too old; list again."""


class TooLarge(Exception):
    """The server does not have our resourceVersion yet: its etcd went back
    (restored from a backup); list again, from its current state."""


@dataclass(frozen=True)
class _Resource:
    kind: Kind
    api_version: str
    list_fn: Callable[..., Any]  # kube_http.getter of the collection
    selectors: dict[str, str] = field(default_factory=dict)


def _resources(api_client: Any, node_name: str, label_selector: str) -> list[_Resource]:
    labels = {"label_selector": label_selector} if label_selector else {}
    return [
        _Resource("Service", "v1", getter(api_client, "/api/v1/services"), labels),
        _Resource(
            "EndpointSlice",
            "discovery.k8s.io/v1",
            getter(api_client, "/apis/discovery.k8s.io/v1/endpointslices"),
            labels,
        ),
        _Resource("Node", "v1", getter(api_client, "/api/v1/nodes"),
                  {"field_selector": f"metadata.name={node_name}"}),
    ]


def _gone_status(exc: BaseException) -> bool:
    return getattr(exc, "status", None) == 410


def _lines(resp: Any) -> Iterator[bytes]:
    """Newline-delimited lines of a streamed (chunked) response body."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buf.strip():
        yield buf


class _Reflector:
    """List + watch of one kind, in its own thread."""

    def __init__(self, source: KubeSource, res: _Resource) -> None:
        self.source = source
        self.res = res
        self.kind = res.kind
        self.resource_version = ""
        self.synced = threading.Event()
        self.backoff = source._new_backoff()  # errors; reset by any successful request
        self.short_backoff = source._new_backoff()  # watches closed at once
        self.outage: tuple[float, int, float] | None = None  # (since, failures, warned at)
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"kube-{self.kind}", daemon=True)

    def run(self) -> None:
        src = self.source
        delay = 0.0
        gone_in_a_row = 0
        while not src.stopping:
            if delay and (src._sleep(delay) or src.stopping):
                break
            delay = 0.0
            try:
                self.list()
                while not src.stopping:
                    started = time.monotonic()
                    if self.watch():
                        gone_in_a_row = 0
                        self.short_backoff.reset()
                    elif time.monotonic() - started < SHORT_WATCH:
                        # Closed at once with nothing in it: resume, but do not hammer.
                        wait = self.short_backoff.next()
                        log.debug("%s: watch closed at once; resuming in %.1fs", self.kind, wait)
                        if src._sleep(wait):
                            break
            except Gone as e:
                # Relist at once the first time; repeated 410s back off.
                gone_in_a_row += 1
                log.info("%s: %s; relisting", self.kind, e)
                delay = 0.0 if gone_in_a_row == 1 else self.backoff.next()
            except TooLarge as e:
                log.warning("%s: %s: the API server's history went back (etcd restored "
                            "from a backup?); relisting", self.kind, e)
                self.resource_version = ""
            except Exception as e:
                if src.stopping:
                    break
                delay = self.backoff.next()
                self._failed(e, delay)

    def _failed(self, exc: BaseException, delay: float) -> None:
        """One warning line when an outage starts, a reminder a minute later
        (and every minute), debug lines in between; never a traceback."""
        text = describe_error(exc)
        now = time.monotonic()
        if self.outage is None:
            self.outage = (now, 1, now)
            log.warning("%s: %s; retrying every %.1fs at most", self.kind, text,
                        self.backoff.cap)
            return
        since, failures, warned = self.outage
        if now - warned >= OUTAGE_REMINDER:
            warned = now
            log.warning("%s: still failing after %.0fs (%d attempts): %s", self.kind,
                        now - since, failures + 1, text)
        else:
            log.debug("%s: %s; retrying in %.1fs", self.kind, text, delay)
        self.outage = (since, failures + 1, warned)

    def _succeeded(self) -> None:
        self.backoff.reset()
        if self.outage is not None:
            since, failures, _ = self.outage
            self.outage = None
            log.info("%s: the API server answers again (after %.1fs, %d failed attempts)",
                     self.kind, time.monotonic() - since, failures)

    def _call(self, **kwargs: Any) -> Any:
        try:
            resp = self.res.list_fn(**self.res.selectors, **kwargs)
        except Exception as e:
            if _gone_status(e):
                raise Gone(f"HTTP 410: {getattr(e, 'reason', e)}") from e
            if too_large(e):
                raise TooLarge(status_message(e)) from e
            raise
        self._succeeded()
        return resp

    def list(self) -> None:
        """A complete (paged) list, delivered as one replace, or page by page
        to a sink that accepts pages (the raw pages are then not all alive
        at once: at 100k endpoints they are twice the parsed state)."""
        src = self.source
        paged = getattr(src.sink, "accepts_pages", False)
        items: list[dict] = []
        cont: str | None = None
        first = True
        count = 0
        while True:
            kwargs: dict[str, Any] = {"_request_timeout": src.request_timeout}
            if src.page_size:
                kwargs["limit"] = src.page_size
            if cont:
                kwargs["_continue"] = cont
            resp = self._call(**kwargs)
            try:
                body = resp.data
            except Exception:
                resp.close()  # a half-read connection must not go back to the pool
                raise
            finally:
                resp.release_conn()
            doc = json.loads(body)
            del body
            items.extend(self._complete(obj) for obj in doc.get("items") or [])
            meta = doc.get("metadata") or {}
            del doc
            cont = meta.get("continue")
            if not cont:
                break
            if paged:
                if src.stopping:
                    return
                count += len(items)
                src._deliver("replace", self.kind, items, first=first, last=False)
                items, first = [], False
        if src.stopping:
            return
        listed = meta.get("resourceVersion") or ""
        if older(listed, self.resource_version):
            log.warning("%s: the API server's resourceVersion went back from %s to %s (etcd "
                        "restored from a backup?): everything is replaced by its current "
                        "list", self.kind, self.resource_version, listed)
        count += len(items)
        if paged:
            src._deliver("replace", self.kind, items, first=first, last=True)
        else:
            src._deliver("replace", self.kind, items)
        self.resource_version = listed
        self.synced.set()
        log.debug("%s: listed %d at %s", self.kind, count, self.resource_version)

    def _complete(self, obj: dict) -> dict:
        # List items come without kind/apiVersion; watch objects carry them.
        obj.setdefault("kind", self.kind)
        obj.setdefault("apiVersion", self.res.api_version)
        return obj

    def watch(self) -> bool:
        """One watch stream from the current resourceVersion until the server
        ends it; True if it delivered anything (an event or a bookmark)."""
        src = self.source
        lo, hi = src.watch_timeout
        timeout = max(1, int(random.uniform(lo, hi)))
        resp = self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # Read timeout past the server's: a silent connection is a dead one.
            _request_timeout=(src.request_timeout[0], timeout + 30),
        )
        progressed = False
        with self._resp_lock:
            self._resp = resp
        try:
            # stop() may have run while the request was in flight and missed it.
            if src.stopping:
                return progressed
            for line in _lines(resp):
                if src.stopping:
                    break
                self.handle(json.loads(line))
                progressed = True
                self.backoff.reset()
        finally:
            with self._resp_lock:
                self._resp = None
            resp.close()  # the stream may be half-read: never reuse its connection
            resp.release_conn()
        return progressed

    def handle(self, event: dict) -> None:
        type_ = event.get("type")
        obj = event.get("object") or {}
        if type_ == "ERROR":
            msg = f"watch error {obj.get('code')} {obj.get('reason')}: {obj.get('message')}"
            if obj.get("code") == 410:
                raise Gone(msg)
            if too_large_status(obj):
                raise TooLarge(msg)
            raise RuntimeError(msg)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if type_ in ("ADDED", "MODIFIED"):
            self.source._deliver("upsert", self.kind, self._complete(obj))
        elif type_ == "DELETED":
            self.source._deliver("delete", self.kind, self._complete(obj))
        elif type_ != "BOOKMARK":
            log.warning("%s: ignoring watch event of type %r", self.kind, type_)
            return
        if rv:
            self.resource_version = rv

    def interrupt(self) -> None:
        """Unblock a watch read from another thread."""
        with self._resp_lock:
            resp = self._resp
        if resp is None:
            return
        try:
            resp.shutdown()  # urllib3 >= 2.3
        except Exception:
            with contextlib.suppress(Exception):
                resp.close()


class KubeSource:
    """Feeds `sink` from the API server; `start()` / `stop()`.

    `api_client` overrides `kubeconfig` (tests, shared clients). `sleep(delay)`
    is the backoff wait (default: interruptible by `stop()`); `rand` drives
    the backoff jitter. Both are injectable for tests.
    """

    def __init__(
        self,
        sink: ObjectSink,
        node_name: str,
        kubeconfig: str | None = None,
        *,
        api_client: Any = None,
        label_selector: str = DEFAULT_LABEL_SELECTOR,
        page_size: int = 500,
        watch_timeout: tuple[float, float] = (300.0, 600.0),
        request_timeout: tuple[float, float] = (10.0, 60.0),
        backoff_initial: float = 0.2,
        backoff_cap: float = 1.0,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if not node_name:
            raise ValueError("node_name is required (the agent watches its own Node)")
        self.sink = sink
        self.node_name = node_name
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self._backoff_args = (backoff_initial, backoff_cap, rand)
        self._stop = threading.Event()
        self._sleep_fn = sleep
        self._sink_lock = threading.Lock()
        self._own_client = api_client is None
        self._api_client = make_api_client(kubeconfig) if api_client is None else api_client
        self._reflectors = {
            res.kind: _Reflector(self, res)
            for res in _resources(self._api_client, node_name, label_selector)
        }

    def _new_backoff(self) -> Backoff:
        initial, cap, rand = self._backoff_args
        return Backoff(initial=initial, cap=cap, rand=rand)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _sleep(self, delay: float) -> bool:
        """Wait out a backoff; True if stop() was called meanwhile."""
        if self._sleep_fn is not None:
            self._sleep_fn(delay)
            return self.stopping
        return self._stop.wait(delay)

    def _deliver(self, op: str, kind: Kind, payload: Any, **kw: Any) -> None:
        with self._sink_lock:
            if self.stopping:
                return
            try:
                getattr(self.sink, op)(kind, payload, **kw)
            except Exception:
                # The sink owns per-object errors; a bug there must not stop the watch.
                log.exception("%s: sink.%s failed", kind, op)

    def start(self) -> None:
        for reflector in self._reflectors.values():
            reflector.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for reflector in self._reflectors.values():
            reflector.interrupt()
        for reflector in self._reflectors.values():
            if reflector.thread.is_alive():
                reflector.thread.join(timeout)
        if self._own_client:
            self._api_client.close()

    def has_synced(self, kind: Kind) -> bool:
        """True once the first complete list of `kind` reached the sink."""
        return self._reflectors[kind].synced.is_set()

    @property
    def synced(self) -> dict[Kind, bool]:
        return {kind: self.has_synced(kind) for kind in KINDS}

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until every kind has synced (or the timeout passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for reflector in self._reflectors.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not reflector.synced.wait(left):
                return False
        return True

    def connectivity(self) -> dict:
        """For `pyagent status`: does the API server answer every watch?"""
        failing = {k: r.outage for k, r in self._reflectors.items() if r.outage is not None}
        problem = ""
        if failing:
            kind, (since, failures, _) = next(iter(failing.items()))
            problem = (f"{kind}: failing for {time.monotonic() - since:.0f}s "
                       f"({failures} attempts)")
        return {"kind": "kubernetes", "where": self._api_client.configuration.host,
                "connected": not failing, "synced": all(self.synced.values()),
                "problem": problem}

    def resource_version(self, kind: Kind) -> str:
        """The last resourceVersion seen for `kind` (list, event or bookmark)."""
        return self._reflectors[kind].resource_version
