"""KubeSource against the in-process fake API server (tests/kubeapi.py),
through the real `kubernetes` client and a kubeconfig file."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubeapi import FakeKubeAPI, endpoint_slice, node, service

from pyagent.sources.kube import Backoff, KubeSource, make_api_client

NODE = "node-a"



def object_key(obj: dict) -> tuple[str, str]:
    """(namespace, name) of an object; Nodes have an empty namespace."""
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")

class RecordingSink:
    """Records every call and keeps the resulting view per kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, object]] = []
        self.state: dict[str, dict[tuple[str, str], dict]] = {}
        self.fail_on: str | None = None

    def replace(self, kind: str, objects: list[dict]) -> None:
        with self.lock:
            self.events.append(("replace", kind, objects))
            self.state[kind] = {object_key(o): o for o in objects}

    def upsert(self, kind: str, obj: dict) -> None:
        with self.lock:
            self.events.append(("upsert", kind, obj))
            if self.fail_on == obj["metadata"]["name"]:
                raise RuntimeError("sink bug")
            self.state.setdefault(kind, {})[object_key(obj)] = obj

    def delete(self, kind: str, obj: dict) -> None:
        with self.lock:
            self.events.append(("delete", kind, obj))
            self.state.setdefault(kind, {}).pop(object_key(obj), None)

    def of(self, kind: str) -> list[tuple[str, object]]:
        with self.lock:
            return [(op, obj) for op, k, obj in self.events if k == kind]

    def names(self, kind: str) -> list[str]:
        with self.lock:
            return sorted(name for _, name in self.state.get(kind, {}))

    def count(self) -> int:
        with self.lock:
            return len(self.events)


class SleepRecorder:
    """Records backoff delays per thread; sleeps only a token real time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delays: dict[str, list[float]] = {}

    def __call__(self, delay: float) -> None:
        with self.lock:
            self.delays.setdefault(threading.current_thread().name, []).append(delay)
        time.sleep(0.005)

    def of(self, kind: str) -> list[float]:
        with self.lock:
            return list(self.delays.get(f"kube-{kind}", []))


def wait_until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def names(objects: list[dict]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeKubeAPI, tmp_path: Path) -> str:
    return str(api.write_kubeconfig(tmp_path / "kubeconfig"))


@pytest.fixture
def make_source(kubeconfig: str) -> Iterator[Callable[..., tuple[KubeSource, RecordingSink]]]:
    sources: list[KubeSource] = []

    def make(**kw: object) -> tuple[KubeSource, RecordingSink]:
        sink = RecordingSink()
        kw.setdefault("sleep", SleepRecorder())
        kw.setdefault("watch_timeout", (30, 30))
        src = KubeSource(sink, NODE, kubeconfig=kubeconfig, **kw)  # type: ignore[arg-type]
        sources.append(src)
        src.start()
        return src, sink

    yield make
    for src in sources:
        src.stop()


def populate(api: FakeKubeAPI) -> None:
    api.create(service("default", "web", "10.96.0.10"))
    api.create(service("kube-system", "dns", "10.96.0.53"))
    # kube-proxy ignores these two (headless / served by another proxy).
    api.create(service("default", "hl", labels={"service.kubernetes.io/headless": ""}))
    api.create(
        service("default", "other", labels={"service.kubernetes.io/service-proxy-name": "x"})
    )
    api.create(endpoint_slice("default", "web-abc", "web", ["10.0.1.1"]))
    api.create(endpoint_slice("kube-system", "dns-xyz", "dns", ["10.0.2.1"]))
    api.create(node(NODE))
    api.create(node("node-b"))


def list_requests(api: FakeKubeAPI, path_part: str) -> int:
    return sum(1 for r in api.requests if path_part in r.path and not r.watch)


def test_initial_sync_of_all_three_kinds(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    assert src.synced == {"Service": True, "EndpointSlice": True, "Node": True}
    first = {k: [obj for op, obj in sink.of(k)] for k in ("Service", "EndpointSlice", "Node")}
    assert [op for op, _ in sink.of("Service")] == ["replace"]
    assert names(first["Service"][0]) == ["dns", "web"]
    assert names(first["EndpointSlice"][0]) == ["dns-xyz", "web-abc"]
    assert names(first["Node"][0]) == [NODE]  # only our own node
    web = sink.state["Service"][("default", "web")]
    # API-server JSON form: camelCase keys, kind/apiVersion filled in for list items.
    assert web["kind"] == "Service" and web["apiVersion"] == "v1"
    assert web["spec"]["clusterIP"] == "10.96.0.10"
    assert web["spec"]["ports"][0]["targetPort"] == 8080
    assert web["metadata"]["resourceVersion"]
    eps = sink.state["EndpointSlice"][("default", "web-abc")]
    assert eps["apiVersion"] == "discovery.k8s.io/v1" and eps["addressType"] == "IPv4"
    assert eps["endpoints"][0]["nodeName"] == NODE
    node_lists = [r for r in api.requests if r.path == "/api/v1/nodes"]
    assert all(r.query["fieldSelector"] == f"metadata.name={NODE}" for r in node_lists)
    assert src.resource_version("Service") == str(api.resource_version)


def test_paged_list_is_one_replace(api: FakeKubeAPI, make_source) -> None:
    for i in range(5):
        api.create(service("default", f"s{i}", f"10.96.0.{i + 1}"))
    src, sink = make_source(page_size=2)
    assert src.wait_synced(5)
    assert [op for op, _ in sink.of("Service")] == ["replace"]
    assert names(sink.of("Service")[0][1]) == [f"s{i}" for i in range(5)]
    pages = [r for r in api.requests if r.path == "/api/v1/services" and not r.watch]
    assert len(pages) == 3 and "continue" in pages[1].query


class PagedSink(RecordingSink):
    """A sink that takes lists page by page, like the agent's store."""

    accepts_pages = True

    def __init__(self) -> None:
        super().__init__()
        self.listing: dict[str, dict] = {}

    def replace(self, kind: str, objects: list[dict], *, first: bool = True,
                last: bool = True) -> None:
        with self.lock:
            self.events.append(("page" if not (first and last) else "replace", kind,
                                (first, last, names(objects))))
            if first:
                self.listing[kind] = {}
            self.listing[kind].update((object_key(o), o) for o in objects)
            if last:
                self.state[kind] = self.listing.pop(kind)


def test_a_paged_list_reaches_a_paged_sink_page_by_page(api: FakeKubeAPI,
                                                        kubeconfig: str) -> None:
    for i in range(5):
        api.create(service("default", f"s{i}", f"10.96.0.{i + 1}"))
    sink = PagedSink()
    src = KubeSource(sink, NODE, kubeconfig=kubeconfig, page_size=2, sleep=SleepRecorder(),
                     watch_timeout=(30, 30))
    src.start()
    try:
        assert src.wait_synced(5)
        assert [obj for _, obj in sink.of("Service")] == [
            (True, False, ["s0", "s1"]), (False, False, ["s2", "s3"]), (False, True, ["s4"])]
        assert sink.names("Service") == [f"s{i}" for i in range(5)]
    finally:
        src.stop()


def test_requests_carry_the_kubeconfig_token_and_skip_the_generated_api(
        api: FakeKubeAPI, kubeconfig: str) -> None:
    populate(api)
    code = ("import sys; from pyagent.sources.kube import KubeSource\n"
            "class Sink:\n"
            "    def __getattr__(self, name): return lambda *a, **kw: None\n"
            f"src = KubeSource(Sink(), {NODE!r}, kubeconfig={kubeconfig!r})\n"
            "src.start(); assert src.wait_synced(10); src.stop()\n"
            "print([m for m in sys.modules if m.startswith('kubernetes.client.api.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    # The generated API classes cost seconds and megabytes to import.
    assert out.strip() == "[]"
    assert {r.authorization for r in api.requests} == {"Bearer fake-token"}


def test_watch_updates_arrive_in_order(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    created = api.create(service("default", "new", "10.96.0.99"))
    changed = api.update(service("default", "web", "10.96.0.10", port=8443))
    api.delete("Service", "kube-system", "dns")
    wait_until(lambda: len(sink.of("Service")) == 4)
    ops = [op for op, _ in sink.of("Service")]
    watched = [(op, obj["metadata"]["name"]) for op, obj in sink.of("Service")[1:]]
    assert ops[0] == "replace"
    assert watched == [("upsert", "new"), ("upsert", "web"), ("delete", "dns")]
    assert sink.state["Service"][("default", "new")] == created
    assert sink.state["Service"][("default", "web")]["spec"]["ports"][0]["port"] == 8443
    assert src.resource_version("Service") == str(api.resource_version)
    assert changed["metadata"]["resourceVersion"] < src.resource_version("Service")
    assert sink.names("Service") == ["new", "web"]


def test_endpointslices_of_one_service_in_several_events(api: FakeKubeAPI, make_source) -> None:
    api.create(service("default", "web"))
    src, sink = make_source()
    assert src.wait_synced(5)
    api.create(endpoint_slice("default", "web-1", "web", ["10.0.0.1", "10.0.0.2"]))
    api.create(endpoint_slice("default", "web-2", "web", ["10.0.0.3"], node="node-b"))
    api.update(endpoint_slice("default", "web-1", "web", ["10.0.0.1"]))
    wait_until(lambda: len(sink.of("EndpointSlice")) == 4)
    assert [op for op, _ in sink.of("EndpointSlice")] == ["replace", "upsert", "upsert", "upsert"]
    slices = sink.state["EndpointSlice"]
    assert sorted(slices) == [("default", "web-1"), ("default", "web-2")]
    for s in slices.values():
        assert s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert [e["addresses"] for e in slices[("default", "web-1")]["endpoints"]] == [["10.0.0.1"]]


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
def test_410_relist_replaces_with_full_current_list(
    api: FakeKubeAPI, make_source, gone_as_http: bool
) -> None:
    api.gone_as_http = gone_as_http
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    old_rv = src.resource_version("Service")
    # The watch falls behind while history is compacted away.
    api.pause()
    api.create(service("default", "added-meanwhile", "10.96.1.1"))
    api.delete("Service", "default", "web")
    api.update(service("kube-system", "dns", "10.96.0.53", port=5353))
    api.compact()
    api.close_watches()
    wait_until(lambda: len(sink.of("Service")) == 2)
    api.resume()
    (op1, _), (op2, relisted) = sink.of("Service")
    assert (op1, op2) == ("replace", "replace")  # no spurious per-object deletes
    proxied = [o for o in api.objects("Service") if not o["metadata"]["labels"]]
    assert sorted(relisted, key=object_key) == proxied  # the full current list
    assert names(relisted) == ["added-meanwhile", "dns"]
    assert sink.state["Service"][("kube-system", "dns")]["spec"]["ports"][0]["port"] == 5353
    assert any(
        r.watch and r.path == "/api/v1/services" and r.query["resourceVersion"] == old_rv
        for r in api.requests
    )
    # Watching resumes from the relist.
    api.create(service("default", "after", "10.96.1.2"))
    wait_until(lambda: "after" in sink.names("Service"))


def test_error_410_mid_stream_relists(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    wait_until(lambda: api.watch_count() == 3)
    api.expire_watches()
    wait_until(lambda: all(len(sink.of(k)) == 2 for k in ("Service", "EndpointSlice", "Node")))
    assert all(op == "replace" for op, _ in sink.of("Node"))
    assert names(sink.of("Node")[1][1]) == [NODE]
    assert src._sleep_fn.delays == {}  # type: ignore[union-attr]  # a first 410: no backoff


def test_repeated_410_backs_off(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    for round_ in range(3):
        wait_until(lambda: api.watch_count() == 3)
        api.expire_watches()
        wait_until(lambda r=round_: len(sink.of("Service")) == r + 2)
    # Each watch ended in 410 without any event in between: the 2nd and 3rd back off.
    assert len(src._sleep_fn.of("Service")) == 2  # type: ignore[union-attr]


def test_watch_closed_at_once_resumes_after_backoff(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    wait_until(lambda: api.watch_count() == 3)
    rv = src.resource_version("Service")
    api.close_watches()
    wait_until(lambda: len(src._sleep_fn.of("Service")) == 1)  # type: ignore[union-attr]
    wait_until(lambda: api.watch_count() == 3)
    rewatch = [r for r in api.requests if r.watch and r.path == "/api/v1/services"][-1]
    assert rewatch.query["resourceVersion"] == rv
    assert list_requests(api, "/services") == 1  # resumed, not relisted


def test_api_down_then_back_with_changes(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    sleep = SleepRecorder()
    src, sink = make_source(sleep=sleep)
    assert src.wait_synced(5)
    wait_until(lambda: api.watch_count() == 3)
    api.stop()
    api.create(service("default", "while-down", "10.96.2.1"))
    api.delete("EndpointSlice", "default", "web-abc")
    api.update(node(NODE, ip="192.168.0.99"))
    delivered = sink.count()
    # Several failed attempts per kind, each after a backoff delay...
    wait_until(lambda: all(len(sleep.of(k)) >= 3 for k in ("Service", "EndpointSlice", "Node")))
    # ...and nothing reached the sink meanwhile: the datapath stays as it was.
    assert sink.count() == delivered
    assert src.synced == {"Service": True, "EndpointSlice": True, "Node": True}
    api.start()
    wait_until(lambda: all(len(sink.of(k)) == 2 for k in ("Service", "EndpointSlice", "Node")))
    assert [op for op, _ in sink.of("EndpointSlice")] == ["replace", "replace"]
    assert sink.names("Service") == ["dns", "web", "while-down"]
    assert sink.names("EndpointSlice") == ["dns-xyz"]
    node_ip = sink.state["Node"][("", NODE)]["status"]["addresses"][0]["address"]
    assert node_ip == "192.168.0.99"


def test_api_down_at_start_syncs_when_it_comes_up(api: FakeKubeAPI, make_source) -> None:
    api.create(service("default", "web"))
    api.stop()
    sleep = SleepRecorder()
    src, sink = make_source(sleep=sleep)
    wait_until(lambda: len(sleep.of("Service")) >= 2)
    assert sink.count() == 0 and not src.has_synced("Service")
    api.start()
    assert src.wait_synced(5)
    assert sink.names("Service") == ["web"]


def test_bookmarks_advance_resource_version(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    wait_until(lambda: api.watch_count() == 3)
    for i in range(3):  # changes to other kinds only: the Service watch sees no event
        api.create(node(f"other-{i}"))
    target = str(api.resource_version)
    assert src.resource_version("Service") != target
    api.bookmark()
    wait_until(lambda: src.resource_version("Service") == target)
    wait_until(lambda: src.resource_version("EndpointSlice") == target)
    lists = list_requests(api, "/services")
    events = sink.count()
    # The next watch resumes from the bookmark, without a relist.
    api.close_watches()
    wait_until(
        lambda: any(
            r.watch and r.path == "/api/v1/services" and r.query["resourceVersion"] == target
            for r in api.requests
        )
    )
    assert list_requests(api, "/services") == lists
    assert sink.count() == events


def test_server_timeout_resumes_watch_without_relist(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source(watch_timeout=(1, 1))
    assert src.wait_synced(5)
    api.create(service("default", "late"))
    wait_until(lambda: "late" in sink.names("Service"))
    watches_before = sum(1 for r in api.requests if r.watch and "services" in r.path)
    wait_until(
        lambda: sum(1 for r in api.requests if r.watch and "services" in r.path) > watches_before,
        timeout=3,
    )
    assert list_requests(api, "/services") == 1
    assert [op for op, _ in sink.of("Service")] == ["replace", "upsert"]
    assert all(r.query["timeoutSeconds"] == "1" for r in api.requests if r.watch)


def test_label_selector_transitions(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    api.update(service("default", "web", labels={"service.kubernetes.io/headless": ""}))
    api.update(service("default", "hl"))  # label removed: now proxied
    wait_until(lambda: len(sink.of("Service")) == 3)
    assert [(op, o["metadata"]["name"]) for op, o in sink.of("Service")[1:]] == [
        ("delete", "web"),
        ("upsert", "hl"),
    ]


def test_http_errors_back_off_then_recover(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    api.fail_next(500, 4)
    sleep = SleepRecorder()
    src, sink = make_source(sleep=sleep)
    assert src.wait_synced(5)
    assert sum(len(v) for v in sleep.delays.values()) == 4
    assert sink.names("Service") == ["dns", "web"]


def test_sink_exception_does_not_stop_the_watch(api: FakeKubeAPI, make_source) -> None:
    src, sink = make_source()
    assert src.wait_synced(5)
    sink.fail_on = "bad"
    api.create(service("default", "bad"))
    api.create(service("default", "good"))
    wait_until(lambda: "good" in sink.names("Service"))


def test_stop_is_prompt_and_final(api: FakeKubeAPI, make_source) -> None:
    populate(api)
    src, sink = make_source()
    assert src.wait_synced(5)
    wait_until(lambda: api.watch_count() == 3)
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 1.0
    events = sink.count()
    api.create(service("default", "after-stop"))
    time.sleep(0.05)
    assert sink.count() == events


def test_backoff_is_bounded_and_jittered() -> None:
    fixed = Backoff(initial=0.2, cap=1.0, jitter=0.5, rand=lambda: 0.0)
    assert [fixed.next() for _ in range(6)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    fixed.reset()
    assert fixed.next() == pytest.approx(0.2)
    rng = random.Random(7)
    jittered = Backoff(initial=0.2, cap=1.0, jitter=0.5, rand=rng.random)
    delays = [jittered.next() for _ in range(6)]
    bases = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True))
    assert len({round(d / b, 6) for d, b in zip(delays, bases, strict=True)}) == 6  # jittered


def test_backoff_while_down_grows_per_kind(api: FakeKubeAPI, make_source) -> None:
    api.stop()
    sleep = SleepRecorder()
    rng = random.Random(1)
    src, sink = make_source(sleep=sleep, rand=rng.random, backoff_initial=0.1, backoff_cap=0.8)
    wait_until(lambda: all(len(sleep.of(k)) >= 6 for k in ("Service", "EndpointSlice", "Node")))
    src.stop()
    for kind in ("Service", "EndpointSlice", "Node"):
        delays = sleep.of(kind)[:6]
        bases = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
        assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True)), delays
        assert delays[3] > delays[0]


def test_every_retry_comes_within_a_second(api: FakeKubeAPI, make_source) -> None:
    """However long the outage, the next attempt is at most 1 s away: the
    agent converges within about a second of the API server answering (it
    used to wait up to 24 s: client-go's 30 s cap)."""
    populate(api)
    sleep = SleepRecorder()
    src, sink = make_source(sleep=sleep)
    assert src.wait_synced(5)
    api.stop()
    wait_until(lambda: all(len(sleep.of(k)) >= 10 for k in ("Service", "EndpointSlice", "Node")),
               timeout=10)
    api.create(service("default", "while-down", "10.96.2.1"))
    api.start()
    wait_until(lambda: "while-down" in sink.names("Service"))
    delays = [d for k in ("Service", "EndpointSlice", "Node") for d in sleep.of(k)]
    assert max(delays) <= 1.0, delays
    assert min(delays) > 0


def test_any_successful_request_resets_the_backoff(api: FakeKubeAPI, make_source) -> None:
    """A second outage starts from the shortest delay again, also when no
    watch event came in between (a quiet cluster: the backoff used to be
    reset by watch events only, so later outages started with long waits)."""
    populate(api)
    sleep = SleepRecorder()
    src, sink = make_source(sleep=sleep, backoff_initial=0.1, backoff_cap=0.8,
                            rand=lambda: 0.0)
    assert src.wait_synced(5)
    starts = []
    for _ in range(2):
        wait_until(lambda: api.watch_count() == 3)
        before = len(sleep.of("Node"))
        starts.append(before)
        api.stop()
        wait_until(lambda b=before: len(sleep.of("Node")) >= b + 5)
        api.start()
        wait_until(lambda: api.watch_count() == 3)
    delays = sleep.of("Node")
    second = delays[starts[1]:]  # the two outages' lengths differ under load
    assert second[0] == pytest.approx(0.1), delays  # a fresh start, not 0.8
    assert len(sink.of("Node")) == 3  # one relist per outage, no events in between


def _outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pyagent.sources.kube"]


@pytest.mark.parametrize("tls", [False, True], ids=["refused", "tls-eof"])
def test_an_outage_is_one_line_when_it_starts_and_when_it_ends(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, tls: bool) -> None:
    """No tracebacks, no multi-line SSL errors: one short warning per kind when
    the API server stops answering, one info line when it is back."""
    caplog.set_level(logging.DEBUG, logger="pyagent.sources.kube")
    with FakeKubeAPI(tls=tls) as api:
        populate(api)
        sleep = SleepRecorder()
        src = KubeSource(RecordingSink(), NODE, kubeconfig=str(api.write_kubeconfig(
            tmp_path / "kc")), sleep=sleep, watch_timeout=(30, 30))
        src.start()
        try:
            assert src.wait_synced(10)
            wait_until(lambda: api.watch_count() == 3)
            api.stop()
            if tls:
                api.close_on_accept()  # TLS handshakes end in EOF, as mid-restart
            wait_until(lambda: all(len(sleep.of(k)) >= 4 for k in ("Service", "Node")),
                       timeout=15)
            api.start()
            wait_until(lambda: api.watch_count() == 3, timeout=10)
        finally:
            src.stop()
    records = _outage_records(caplog)
    assert records
    for r in records:
        msg = r.getMessage()
        assert r.exc_info is None and "\n" not in msg and len(msg) < 300, msg
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    for kind in ("Service", "EndpointSlice", "Node"):
        mine = [w for w in warnings if w.startswith(f"{kind}:")]
        assert len(mine) == 1, warnings  # when it starts; reminders come after a minute
    if tls:  # the debug lines show what the client saw, still one line each
        assert any("SSL" in r.getMessage() for r in records), [r.getMessage() for r in records]
    back = [r.getMessage() for r in records if "answers again" in r.getMessage()]
    assert len(back) == 3, back


def test_restored_etcd_with_a_lower_resource_version_converges(api: FakeKubeAPI,
                                                               make_source) -> None:
    """The API server comes back on an etcd restored from a backup: what was
    written after the backup is gone, and its resourceVersions are handed out
    again to new writes. The source ends up with exactly the server's state."""
    populate(api)
    backup = api.snapshot()
    src, sink = make_source()
    assert src.wait_synced(5)
    api.create(service("default", "after-backup", "10.96.3.1"))
    api.update(service("default", "web", "10.96.0.10", port=81))
    api.delete("Service", "kube-system", "dns")
    wait_until(lambda: sink.names("Service") == ["after-backup", "web"])
    high = int(src.resource_version("Service"))
    api.restore(backup)
    # New writes reuse the resourceVersions the lost ones had, and pass them.
    for i in range(6):
        api.create(service("default", f"new-{i}", f"10.96.4.{i + 1}"))
    api.update(service("default", "web", "10.96.0.10", port=82))
    assert api.resource_version > high
    wait_until(lambda: sink.names("Service") == ["dns", "new-0", "new-1", "new-2", "new-3",
                                                 "new-4", "new-5", "web"], timeout=10)
    web = sink.state["Service"][("default", "web")]
    assert web["spec"]["ports"][0]["port"] == 82
    api.create(service("default", "later", "10.96.5.1"))
    wait_until(lambda: "later" in sink.names("Service"))


def test_watch_from_a_version_the_server_lacks_relists_at_once(api: FakeKubeAPI,
                                                                make_source) -> None:
    populate(api)
    backup = api.snapshot()
    api.create(service("default", "after-backup", "10.96.3.1"))
    sleep = SleepRecorder()
    src, sink = make_source(sleep=sleep)
    assert src.wait_synced(5)
    wait_until(lambda: api.watch_count() == 3)
    api.restore(backup, graceful=True)  # resuming from our version gets 504 Too large
    wait_until(lambda: sink.names("Service") == ["dns", "web"], timeout=10)
    # The watch the old server ended at once waits one short delay; the 504
    # that follows is answered by a relist at once, not after another backoff.
    assert len(sleep.of("Service")) <= 1, sleep.of("Service")


def test_make_api_client_uses_kubeconfig(api: FakeKubeAPI, kubeconfig: str) -> None:
    client = make_api_client(kubeconfig)
    try:
        assert client.configuration.host == api.url
        assert client.configuration.retries is False
    finally:
        client.close()


def test_in_cluster_config_is_used_without_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import ConfigException

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException, match="Service host/port is not set"):
        make_api_client(None)


@pytest.fixture
def service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import pyagent.sources.kube_client as kube

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nx\n")
    monkeypatch.setattr(kube, "SA_TOKEN", str(tmp_path / "token"))
    monkeypatch.setattr(kube, "SA_CA", str(tmp_path / "ca.crt"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path


def test_master_replaces_the_in_cluster_address(service_account: Path) -> None:
    """On a node without kube-proxy the in-cluster address is a ClusterIP only
    this agent could program: --master (or pyagent.k8sServiceHost) names the
    API server, with the pod's service account token and CA."""
    client = make_api_client(None, "https://10.0.0.1:6443")
    try:
        cfg = client.configuration
        assert cfg.host == "https://10.0.0.1:6443"
        assert cfg.api_key["BearerToken"] == "bearer sa-token"
        assert cfg.ssl_ca_cert == str(service_account / "ca.crt")
        cfg.refresh_api_key_hook(cfg)  # the token refresh keeps our address
        assert cfg.host == "https://10.0.0.1:6443"
    finally:
        client.close()


def test_master_overrides_a_kubeconfig_and_works(api: FakeKubeAPI, tmp_path: Path) -> None:
    other = tmp_path / "kc"
    other.write_text(api.write_kubeconfig(tmp_path / "real").read_text().replace(
        api.url, "http://127.0.0.1:9"))  # a kubeconfig naming a dead address
    client = make_api_client(str(other), api.url)
    populate(api)
    sink = RecordingSink()
    src = KubeSource(sink, NODE, api_client=client, watch_timeout=(30, 30))
    src.start()
    try:
        assert src.wait_synced(5)
        assert sink.names("Service") == ["dns", "web"]
    finally:
        src.stop()
        client.close()


def test_master_alone_without_service_account(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    import pyagent.sources.kube_client as kube

    monkeypatch.setattr(kube, "SA_TOKEN", str(tmp_path / "missing"))
    client = make_api_client(None, "http://127.0.0.1:8080")
    try:
        assert client.configuration.host == "http://127.0.0.1:8080"
        assert not client.configuration.api_key
    finally:
        client.close()


def test_node_name_required(kubeconfig: str) -> None:
    with pytest.raises(ValueError):
        KubeSource(RecordingSink(), "", kubeconfig=kubeconfig)
