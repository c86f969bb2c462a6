"""TEST FIXTURE, not product code: an in-process fake kube-apiserver.

No kube-apiserver can be installed here, so this speaks just enough of the
Kubernetes list/watch protocol for the official `kubernetes` Python client:

- GET /api/v1/services, /apis/discovery.k8s.io/v1/endpointslices (also
  namespaced) and /api/v1/nodes, with labelSelector (equality and existence
  terms), fieldSelector (metadata.name / metadata.namespace), limit/continue
  paging over a consistent snapshot, and JSON lists carrying
  metadata.resourceVersion; list items omit kind/apiVersion like the real one.
- ?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T:
  a chunked stream of {"type": ..., "object": ...} lines. Objects moving in or
  out of a label selector turn into ADDED / DELETED, as on the real server.
- 410 Gone when the resourceVersion (or continue token) is older than the
  compaction point: an ERROR event carrying a Status (default) or an HTTP 410
  (`gone_as_http = True`).
- GET /api/v1/nodes/NAME (one Node; 404 when absent).
- /version, /api, /apis discovery stubs.
- A restored etcd: snapshot() and restore(snap) put the objects and the
  resourceVersion back (the server restarts: watches end, connections drop).
  A watch from a resourceVersion the server does not have yet waits a moment
  (too_large_wait) for it, as the real watch cache does, then fails with 504
  "Too large resource version" (cause ResourceVersionTooLarge).
- TLS (`FakeKubeAPI(tls=True)`: a self-signed certificate made with openssl,
  the kubeconfig carries it), and close_on_accept(): while down, a listener
  on the port that accepts and closes at once (an API server mid-restart
  behind a load balancer; with TLS the client sees SSL EOF errors).
- `python tests/kubeapi.py serve`: a server in its own process (e.g. inside a
  test's network namespace); it prints `ready PORT` and takes JSON commands,
  one per line on stdin: {"op": "create"|"update"|"delete", ...}.

Tests drive it with create/update/apply/delete (each bumps one global
resourceVersion), compact(), bookmark(), expire_watches(), close_watches(),
pause()/resume() (hold back watch events), fail_next(code, n), and
stop()/start() (connection refused while down; start() reuses the port).
Everything binds 127.0.0.1.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import json
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str
    namespaced: bool


RESOURCES = {
    "Service": Resource("Service", "v1", True),
    "EndpointSlice": Resource("EndpointSlice", "discovery.k8s.io/v1", True),
    "Node": Resource("Node", "v1", False),
}
ROUTES = [
    (re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?services$"), "Service"),
    (
        re.compile(r"^/apis/discovery\.k8s\.io/v1/(?:namespaces/(?P<ns>[^/]+)/)?endpointslices$"),
        "EndpointSlice",
    ),
    (re.compile(r"^/api/v1/nodes$"), "Node"),
]
ONE_NODE = re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$")
EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")


def route(path: str) -> tuple[str, str | None] | None:
    """(kind, namespace or None) served at `path`."""
    for pattern, kind in ROUTES:
        if m := pattern.match(path):
            return kind, m.groupdict().get("ns")
    return None


@dataclass
class Event:
    rv: int
    kind: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict
    prev: dict | None


@dataclass(eq=False)  # identity: kept in a set
class Watcher:
    bookmarks: bool
    bookmark: bool = False
    expire: bool = False
    close: bool = False


@dataclass
class Request:
    path: str
    query: dict[str, str]
    authorization: str | None = None  # the Authorization header
    watch: bool = field(init=False)

    def __post_init__(self) -> None:
        self.watch = self.query.get("watch") in ("true", "1")


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta["name"])


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _selector_terms(text: str, allowed: str) -> list[tuple[str, str, str | None]]:
    """[(op, key, value)] for `key`, `!key`, `k=v`, `k==v`, `k!=v` terms."""
    terms = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*))?", raw)
        if not m:
            raise ValueError(f"unsupported selector term {raw!r}")
        neg, key, op, value = m.groups()
        if op:
            terms.append(("ne" if op == "!=" else "eq", key, value))
        elif allowed == "label":
            terms.append(("absent" if neg else "present", key, None))
        else:
            raise ValueError(f"unsupported field selector term {raw!r}")
    return terms


def _field(obj: dict, path: str) -> str:
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


class Selector:
    def __init__(self, namespace: str | None, labels: str, fields: str) -> None:
        self.namespace = namespace
        self.text = (namespace, labels, fields)
        self.labels = _selector_terms(labels, "label")
        self.fields = _selector_terms(fields, "field")

    def matches(self, obj: dict) -> bool:
        if self.namespace and _key(obj)[0] != self.namespace:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for op, key, value in self.labels:
            if op == "present" and key not in labels:
                return False
            if op == "absent" and key in labels:
                return False
            if op == "eq" and labels.get(key) != value:
                return False
            if op == "ne" and labels.get(key) == value:
                return False
        return all((_field(obj, path) == value) == (op == "eq") for op, path, value in self.fields)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: FakeKubeAPI) -> None:
        self.api = api
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        # Clients vanishing mid-stream is routine here; anything else is a fixture bug.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class ListItems(list):
    """A list body's items, each already JSON (bytes)."""


class FakeKubeAPI:
    """See the module docstring. Use as a context manager or start()/stop()."""

    def __init__(self, start_rv: int = 1000, tls: bool = False) -> None:
        self.tls = tls
        self._certs: Path | None = None
        self._closer: socket.socket | None = None
        self.too_large_wait = 0.3
        self._cond = threading.Condition()
        self._rv = start_rv
        self._objects: dict[str, dict[tuple[str, str], dict]] = {k: {} for k in RESOURCES}
        self._log: list[Event] = []
        self._compacted = 0
        self._listed: dict[tuple[str, int, tuple], list[dict]] = {}  # first pages' lists
        # list items as JSON, by id of the stored (never changed) object: a
        # benchmark's 100k endpoints are served at the agent's pace, not json's
        self._item_json: dict[int, tuple[dict, bytes]] = {}
        self._paused = False
        self._watchers: set[Watcher] = set()
        self._failures: list[int] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.gone_as_http = False
        self.requests: list[Request] = []
        self.events: list[dict] = []  # Events POSTed (core/v1), in order

    # --- lifecycle -------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        self.stop_closer()
        self._server = _Server(("127.0.0.1", self.port), self)
        if self.tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self._certificate())
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down: close the listener and every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._cond.notify_all()
        with contextlib.suppress(OSError):  # wakes serve_forever now, not after its poll
            server.socket.shutdown(socket.SHUT_RDWR)
        server.shutdown()
        server.server_close()
        server.drop_connections()
        assert self._thread is not None
        self._thread.join(5)

    @property
    def up(self) -> bool:
        return self._server is not None

    def _certificate(self) -> tuple[str, str]:
        """A self-signed certificate for 127.0.0.1 (made once per server)."""
        if self._certs is None:
            import subprocess
            import tempfile

            self._certs = Path(tempfile.mkdtemp(prefix="fakekube-"))
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                 "-keyout", str(self._certs / "key.pem"), "-out", str(self._certs / "cert.pem")],
                check=True, capture_output=True)
        return str(self._certs / "cert.pem"), str(self._certs / "key.pem")

    def close_on_accept(self) -> None:
        """While down: accept connections on the port and close them at once."""
        assert self._server is None, "stop() first"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._closer = sock

        def loop() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.close()
        threading.Thread(target=loop, daemon=True).start()

    def stop_closer(self) -> None:
        sock, self._closer = self._closer, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        cluster: dict = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = self._certificate()[0]
        path.write_text(
            json.dumps(  # JSON is YAML, and the client reads either
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": cluster}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    # --- objects ---------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def _commit(self, kind: str, type_: str, obj: dict, prev: dict | None) -> dict:
        with self._cond:
            self._rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta["resourceVersion"] = str(self._rv)
            if prev is not None:
                meta["uid"] = prev["metadata"]["uid"]
                meta["creationTimestamp"] = prev["metadata"]["creationTimestamp"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ"))
            res = RESOURCES[kind]
            obj["kind"], obj["apiVersion"] = kind, res.api_version
            if res.namespaced:
                meta.setdefault("namespace", "default")
            if type_ == "DELETED":
                del self._objects[kind][_key(obj)]
            else:
                self._objects[kind][_key(obj)] = obj
                self._list_item(obj)  # encoded now: lists are served at the client's pace
            self._log.append(Event(self._rv, kind, type_, obj, prev))
            self._cond.notify_all()
            return copy.deepcopy(obj)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self._cond:
            obj = self._objects[kind].get((namespace, name))
            return copy.deepcopy(obj)

    def create(self, obj: dict) -> dict:
        with self._cond:
            if self.get(obj["kind"], *_key(obj)) is not None:
                raise KeyError(f"{obj['kind']} {_key(obj)} exists")
            return self._commit(obj["kind"], "ADDED", obj, None)

    def update(self, obj: dict) -> dict:
        with self._cond:
            prev = self._objects[obj["kind"]].get(_key(obj))
            if prev is None:
                raise KeyError(f"{obj['kind']} {_key(obj)} not found")
            return self._commit(obj["kind"], "MODIFIED", obj, prev)

    def apply(self, obj: dict) -> dict:
        with self._cond:
            if self._objects[obj["kind"]].get(_key(obj)) is None:
                return self.create(obj)
            return self.update(obj)

    def delete(self, kind: str, namespace: str, name: str) -> dict:
        with self._cond:
            prev = self._objects[kind][(namespace, name)]
            return self._commit(kind, "DELETED", prev, prev)

    def objects(self, kind: str) -> list[dict]:
        with self._cond:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[kind].items())]

    # --- protocol knobs --------------------------------------------------

    def snapshot(self) -> tuple:
        """What an etcd backup holds now (for restore())."""
        with self._cond:
            return self._rv, copy.deepcopy(self._objects), list(self._log)

    def restore(self, snap: tuple, graceful: bool = False) -> None:
        """The API server restarts on an etcd restored from `snap`: everything
        after it is gone, and its resourceVersions will be handed out again.
        `graceful`: the old server ends its watches cleanly and the new one
        answers at once (clients resume their watches instead of failing);
        otherwise connections drop and the port refuses for a moment."""
        if graceful:
            with self._cond:
                self._rv, objects, log = snap
                self._objects = copy.deepcopy(objects)
                self._log = list(log)
                self._listed.clear()  # its resourceVersions will mean other states
            self.close_watches()
            return
        self.stop()
        with self._cond:
            self._rv, objects, log = snap
            self._objects = copy.deepcopy(objects)
            self._log = list(log)
            self._listed.clear()
        self.start()

    def compact(self) -> int:
        """Forget history: watches and continue tokens older than now get 410."""
        with self._cond:
            self._compacted = self._rv
            return self._rv

    def bookmark(self) -> None:
        """Send a BOOKMARK to every watch that allows bookmarks."""
        self._signal("bookmark")

    def expire_watches(self) -> None:
        """End every watch with an ERROR 410 event (a watch cache falling behind)."""
        self._signal("expire")

    def close_watches(self) -> None:
        """End every watch cleanly, as a server-side timeout does."""
        self._signal("close")

    def _signal(self, flag: str) -> None:
        with self._cond:
            for w in self._watchers:
                setattr(w, flag, True)
            self._cond.notify_all()

    def pause(self) -> None:
        """Hold back watch events (they are delivered after resume())."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def fail_next(self, code: int, count: int = 1) -> None:
        """Answer the next `count` requests with HTTP `code`."""
        with self._cond:
            self._failures.extend([code] * count)

    def watch_count(self) -> int:
        with self._cond:
            return len(self._watchers)

    # --- serving ---------------------------------------------------------

    def _state_at(self, kind: str, rv: int) -> dict[tuple[str, str], dict]:
        state: dict[tuple[str, str], dict] = {}
        for ev in self._log:
            if ev.rv > rv:
                break
            if ev.kind != kind:
                continue
            if ev.type == "DELETED":
                state.pop(_key(ev.obj), None)
            else:
                state[_key(ev.obj)] = ev.obj
        return state

    def serve_list(self, kind: str, sel: Selector, q: dict[str, str]) -> tuple[int, dict]:
        res = RESOURCES[kind]
        limit = int(q.get("limit") or 0)
        with self._cond:
            after: list[str] | None = None
            if q.get("continue"):
                token = json.loads(base64.b64decode(q["continue"]))
                rv, after = token["rv"], token["after"]
                if rv < self._compacted:
                    return 410, status(410, "Expired", "The provided continue parameter is too old")
                items = self._listed.get((kind, rv, sel.text))
                if items is None:
                    snapshot = self._state_at(kind, rv)
            else:
                rv, snapshot, items = self._rv, self._objects[kind], None
            if items is None:
                items = [o for k, o in sorted(snapshot.items()) if sel.matches(o)]
                # The next pages of this list read the same snapshot (immutable:
                # commits store copies): a list of N items costs O(N), not O(N^2).
                if len(self._listed) >= 8:
                    self._listed.pop(next(iter(self._listed)))
                self._listed[(kind, rv, sel.text)] = items
        if after is not None:  # items are in key order
            items = items[bisect.bisect_right(items, tuple(after), key=_key):]
        meta: dict = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            items, rest = items[:limit], len(items) - limit
            last = list(_key(items[-1]))
            meta["continue"] = base64.b64encode(json.dumps({"rv": rv, "after": last}).encode())
            meta["continue"] = meta["continue"].decode()
            meta["remainingItemCount"] = rest
        body = {"kind": kind + "List", "apiVersion": res.api_version, "metadata": meta}
        return 200, body | {"items": ListItems(self._list_item(o) for o in items)}

    def _list_item(self, obj: dict) -> bytes:
        """The real server omits kind/apiVersion on list items. Encoded once
        per stored object (commits store copies: never changed in place)."""
        hit = self._item_json.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if len(self._item_json) > 2 * sum(map(len, self._objects.values())) + 1000:
            self._item_json.clear()  # entries of replaced objects
        data = json.dumps({k: v for k, v in obj.items()
                           if k not in ("kind", "apiVersion")}).encode()
        self._item_json[id(obj)] = (obj, data)
        return data

    def _translate(self, ev: Event, sel: Selector) -> tuple[str, dict] | None:
        """The event a selector-filtered watch sees, if any."""
        now = sel.matches(ev.obj)
        before = ev.prev is not None and sel.matches(ev.prev)
        if ev.type == "ADDED":
            return ("ADDED", ev.obj) if now else None
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if now else None
        if now and before:
            return ("MODIFIED", ev.obj)
        if now:
            return ("ADDED", ev.obj)
        return ("DELETED", ev.obj) if before else None

    def serve_watch(self, handler: _Handler, kind: str, sel: Selector, q: dict[str, str]) -> None:
        res = RESOURCES[kind]
        rv_param = q.get("resourceVersion") or "0"
        timeout = float(q.get("timeoutSeconds") or 0)
        deadline = time.monotonic() + timeout if timeout else None
        watcher = Watcher(bookmarks=q.get("allowWatchBookmarks") in ("true", "1"))
        initial: list[tuple[str, dict]] = []
        too_large, body = False, {}
        with self._cond:
            if rv_param == "0":  # "any": synthetic ADDED for the current state
                pos = self._rv
                initial = [("ADDED", o) for _, o in sorted(self._objects[kind].items())]
                initial = [(t, o) for t, o in initial if sel.matches(o)]
            else:
                pos = int(rv_param)
                # The watch cache waits briefly for a version it has not seen yet.
                too_large = not self._cond.wait_for(lambda: self._rv >= pos,
                                                    self.too_large_wait)
                if too_large:
                    body = status(504, "Timeout", f"Too large resource version: {pos}, "
                                                  f"current: {self._rv}")
                    body["details"] = {"causes": [{"reason": "ResourceVersionTooLarge",
                                                   "message": "Too large resource version"}],
                                       "retryAfterSeconds": 1}
            gone = pos < self._compacted
            idx = bisect.bisect_right([e.rv for e in self._log], pos)
            if not gone and not too_large:
                self._watchers.add(watcher)
        if too_large:
            handler.send_body(504, body)
            return
        if gone and self.gone_as_http:
            handler.send_body(410, status(410, "Expired", f"too old resource version: {pos}"))
            return
        handler.start_stream()
        try:
            if gone:
                msg = f"too old resource version: {pos} ({self._compacted})"
                handler.send_chunk({"type": "ERROR", "object": status(410, "Expired", msg)})
                handler.end_stream()
                return
            for type_, obj in initial:
                handler.send_chunk({"type": type_, "object": obj})
            while True:
                out: list[dict] = []
                end = False
                with self._cond:
                    while True:
                        if not self.up:
                            return  # server going down: drop without a clean end
                        pending = [] if self._paused else self._log[idx:]
                        expired = deadline is not None and time.monotonic() >= deadline
                        flags = watcher.bookmark or watcher.expire or watcher.close
                        if pending or flags or expired:
                            break
                        wait = None if deadline is None else deadline - time.monotonic()
                        self._cond.wait(min(wait, 0.5) if wait is not None else 0.5)
                    idx += len(pending)
                    for ev in pending:
                        pos = ev.rv
                        if ev.kind == kind and (t := self._translate(ev, sel)):
                            out.append({"type": t[0], "object": t[1]})
                    if watcher.bookmark and not self._paused:
                        watcher.bookmark = False
                        if watcher.bookmarks:
                            meta = {"resourceVersion": str(pos)}
                            obj = {"kind": kind, "apiVersion": res.api_version, "metadata": meta}
                            out.append({"type": "BOOKMARK", "object": obj})
                    if watcher.expire:
                        msg = f"too old resource version: {pos}"
                        out.append({"type": "ERROR", "object": status(410, "Expired", msg)})
                        end = True
                    end = end or watcher.close or expired
                for event in out:
                    handler.send_chunk(event)
                if end:
                    handler.end_stream()
                    return
        finally:
            with self._cond:
                self._watchers.discard(watcher)

    def next_failure(self) -> int | None:
        with self._cond:
            return self._failures.pop(0) if self._failures else None


DISCOVERY = {
    "/version": {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "platform": "fake"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": "discovery.k8s.io",
                "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"},
            }
        ],
    },
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        api.requests.append(Request(url.path, q, self.headers.get("Authorization")))
        if (code := api.next_failure()) is not None:
            self.send_body(code, status(code, "InternalError", "injected failure"))
            return
        if url.path in DISCOVERY:
            self.send_body(200, DISCOVERY[url.path])
            return
        if m := ONE_NODE.match(url.path):
            obj = api.get("Node", "", m.group("name"))
            if obj is None:
                self.send_body(404, status(404, "NotFound", f'nodes "{m.group("name")}" not found'))
            else:
                self.send_body(200, obj)
            return
        found = route(url.path)
        if found is None:
            self.send_body(404, status(404, "NotFound", f"no route for {url.path}"))
            return
        kind, namespace = found
        try:
            sel = Selector(namespace, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        except ValueError as e:
            self.send_body(400, status(400, "BadRequest", str(e)))
            return
        try:
            if q.get("watch") in ("true", "1"):
                api.serve_watch(self, kind, sel, q)
            else:
                self.send_body(*api.serve_list(kind, sel, q))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def do_POST(self) -> None:
        """Only Events are created through this fake (core/v1)."""
        api = self.server.api
        url = urlsplit(self.path)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        api.requests.append(Request(url.path, {}))
        if (code := api.next_failure()) is not None:
            self.send_body(code, status(code, "InternalError", "injected failure"))
            return
        m = EVENTS.match(url.path)
        if m is None or body.get("kind", "Event") != "Event":
            self.send_body(404, status(404, "NotFound", f"no route for POST {url.path}"))
            return
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", m.group("ns")) != m.group("ns"):
            self.send_body(400, status(400, "BadRequest", "namespace does not match the path"))
            return
        with api._cond:
            api._rv += 1
            meta.update(namespace=m.group("ns"), resourceVersion=str(api._rv),
                        name=meta.get("name") or f"{meta.get('generateName', 'event.')}"
                                                 f"{api._rv:x}")
            api.events.append(body)
        self.send_body(201, body)

    def send_body(self, code: int, body: dict) -> None:
        items = body.get("items")
        if isinstance(items, ListItems):  # items already encoded: join them in
            head = json.dumps({k: v for k, v in body.items() if k != "items"}).encode()
            data = head[:-1] + b', "items": [' + b", ".join(items) + b"]}"
        else:
            data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.flush()

    def send_chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --- object builders for tests ----------------------------------------------


def service(
    namespace: str,
    name: str,
    cluster_ip: str = "10.96.0.10",
    port: int = 80,
    labels: dict[str, str] | None = None,
) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name, "labels": labels or {}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080}],
        },
    }


def endpoint_slice(
    namespace: str, name: str, service_name: str, addresses: list[str], node: str = "node-a"
) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": node} for a in addresses
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }


def node(name: str, ip: str = "192.168.0.10") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


# --- a server in its own process --------------------------------------------


def serve_stdio() -> None:
    """`python tests/kubeapi.py serve [--tls]`: print `ready PORT [CERT]`, then apply
    one JSON command per stdin line ({"op": "create", "obj": {...}},
    {"op": "delete", "kind": K, "namespace": NS, "name": N}), answering `ok`
    or `error MESSAGE`; ends at EOF."""
    api = FakeKubeAPI(tls="--tls" in sys.argv).start()
    cert = api._certificate()[0] if api.tls else ""
    print(f"ready {api.port} {cert}".strip(), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if cmd["op"] in ("create", "update", "apply"):
                getattr(api, cmd["op"])(cmd["obj"])
            elif cmd["op"] == "delete":
                api.delete(cmd["kind"], cmd.get("namespace", ""), cmd["name"])
            else:
                raise ValueError(f"unknown op {cmd['op']!r}")
            print("ok", flush=True)
        except Exception as exc:  # the test reads the reason
            print(f"error {exc}", flush=True)
    api.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve_stdio()
