"""`pyagent monitor` decoding and filters on synthetic struct lb_event records
(the lab tests in tests/test_monitor.py take them from the kernel)."""

from __future__ import annotations

import argparse
import time

from pyagent.cli import monitor
from pyagent.dataplanes.ebpf import layout as L


def event(origin: int, verdict: int, backend: str | None = None, fam: int = 4) -> L.LbEvent:
    ev = L.LbEvent(time_ns=time.monotonic_ns(), family=fam, proto=6, verdict=verdict,
                   origin=origin, rev_nat_id=7, frontend_port=L.be16(80))
    if fam == 4:
        ev.frontend.p32[0] = L.ip4("10.96.0.10")
    else:
        ev.frontend = L.ip6("fd00::10")
    if origin == L.EventOrigin.SOCK:
        ev.netns_cookie = 4097
    else:
        ev.client.p32[0] = L.ip4("203.0.113.5")
        ev.client_port = L.be16(40000)
    if backend:
        ev.backend_id = 3
        ev.backend.p32[0] = L.ip4(backend)
        ev.backend_port = L.be16(8080)
    return ev


def args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"service": [], "backend": [], "verdict": [], **kw})


def test_decode_socket_and_tc_events() -> None:
    names = {7: "default/echo:http"}
    e = monitor.decode(event(L.EventOrigin.SOCK, L.EventVerdict.TRANSLATED, "10.244.0.10"),
                       names)
    assert e["client"] == {"netnsCookie": 4097} and e["origin"] == "socket"
    assert e["backend"] == {"id": 3, "address": "10.244.0.10", "port": 8080}
    assert e["frontend"] == {"address": "10.96.0.10", "port": 80}
    assert (e["service"], e["verdict"], e["protocol"]) == ("default/echo:http", "translated",
                                                          "TCP")
    line = monitor.text_line(e)
    assert "netns 4097 -> 10.96.0.10:80/TCP (default/echo:http) => 10.244.0.10:8080 " \
           "translated" in line
    t = monitor.decode(event(L.EventOrigin.TC, L.EventVerdict.REJECT), {})
    assert t["client"] == {"address": "203.0.113.5", "port": 40000} and t["backend"] is None
    assert monitor.text_line(t).endswith("(id 7) => - reject")
    assert abs(time.time() - _parse(t["time"])) < 5  # monotonic -> wall clock


def _parse(iso: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(iso).timestamp()


def test_filters() -> None:
    names = {7: "default/echo:http"}
    ok = monitor.decode(event(L.EventOrigin.SOCK, L.EventVerdict.TRANSLATED, "10.244.0.10"),
                        names)
    refused = monitor.decode(event(L.EventOrigin.SOCK, L.EventVerdict.REJECT), names)
    for want in ("default/echo", "default/echo:http", "echo", "10.96.0.10", "10.96.0.10:80"):
        assert monitor.matcher(args(service=[want]))(ok), want
    assert not monitor.matcher(args(service=["default/other"]))(ok)
    assert monitor.matcher(args(backend=["10.244.0.10:8080"]))(ok)
    assert not monitor.matcher(args(backend=["10.244.0.10"]))(refused)  # no backend
    only = monitor.matcher(args(verdict=["reject", "drop"]))
    assert only(refused) and not only(ok)


def test_prune_never_fails_a_sync(tmp_path, monkeypatch) -> None:
    from pyagent.dataplanes.ebpf import events

    assert events.prune(str(tmp_path / "no-bpffs")) == []  # nothing pinned: nothing to do

    class Boom:
        def __init__(self, bpffs: str) -> None:
            raise PermissionError(13, "read-only /run")

    calls = []

    class FakeMap:
        def close(self) -> None:
            calls.append("closed")

    monkeypatch.setattr(events, "_open", lambda bpffs: (FakeMap(), FakeMap()))
    monkeypatch.setattr(events, "_Locked", Boom)
    assert events.prune("/x") == [] and calls == ["closed", "closed"]
