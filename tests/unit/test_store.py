"""ServiceStore: change tracking, last good versions, per-service state."""

from __future__ import annotations

import copy
import logging

from pyagent.core.config import NodeConfig
from pyagent.core.store import ServiceStore

NODE = "node-a"


def svc(name: str = "svc", ip: str = "172.30.0.1", rv: str | None = None, **spec: object) -> dict:
    meta = {"namespace": "ns", "name": name}
    if rv:
        meta["resourceVersion"] = rv
    return {"kind": "Service", "metadata": meta,
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}], **spec}}


def eps(name: str, service: str, *ips: str, node: str | None = None, zone_hint: str = "",
        rv: str | None = None) -> dict:
    meta = {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": service}}
    if rv:
        meta["resourceVersion"] = rv
    endpoints = []
    for ip in ips:
        ep: dict = {"addresses": [ip]}
        if node:
            ep["nodeName"] = node
        if zone_hint:
            ep["hints"] = {"forZones": [{"name": zone_hint}]}
        endpoints.append(ep)
    return {"kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}


def node(zone: str, name: str = NODE) -> dict:
    return {"kind": "Node", "metadata": {"name": name,
                                         "labels": {"topology.kubernetes.io/zone": zone}}}


def cluster_addrs(store: ServiceStore, name: str = "svc") -> list[str]:
    (state,) = store.state_for(("ns", name))
    return [e.addr for e in state.cluster_endpoints or ()]


def fresh() -> ServiceStore:
    store = ServiceStore(NodeConfig(node_name=NODE))
    store.replace("Service", [svc()])
    store.replace("EndpointSlice", [eps("svc-1", "svc", "10.0.0.1")])
    store.replace("Node", [])
    store.take_changes()
    return store


def test_synced_after_every_kind() -> None:
    store = ServiceStore(NodeConfig())
    store.replace("Service", [])
    store.replace("EndpointSlice", [])
    assert not store.synced()
    store.replace("Node", [])
    assert store.synced()


def test_changes_pending_and_totals() -> None:
    store = fresh()
    assert store.take_changes() == set() and store.pending() == (0, 0)
    before = store.totals()
    store.upsert("EndpointSlice", eps("svc-2", "svc", "10.0.0.2"))
    store.upsert("Service", svc("other", "172.30.0.2"))
    assert store.pending() == (1, 1)
    assert store.totals() == (before[0] + 1, before[1] + 1)
    assert store.take_changes() == {("ns", "svc"), ("ns", "other")}
    assert store.pending() == (0, 0)
    assert cluster_addrs(store) == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_no_op_updates_are_dropped() -> None:
    store = fresh()
    totals = store.totals()
    store.upsert("Service", copy.deepcopy(svc()))  # identical content
    store.replace("EndpointSlice", [eps("svc-1", "svc", "10.0.0.1")])
    assert store.take_changes() == set() and store.totals() == totals
    store.upsert("Service", svc(rv="5"))
    store.take_changes()
    store.upsert("Service", svc(rv="5", sessionAffinity="ClientIP"))  # same resourceVersion
    assert store.take_changes() == set()


def test_changes_that_do_not_change_the_state_are_dropped() -> None:
    store = fresh()
    store.upsert("Service", svc(rv="7"))
    store.upsert("Service", {**svc(rv="8"), "metadata": {
        "namespace": "ns", "name": "svc", "resourceVersion": "8",
        "annotations": {"owner": "team-a"}}})
    assert store.pending() == (1, 0)
    assert store.take_changes() == set()
    store.upsert("EndpointSlice", eps("svc-1", "svc", "10.0.0.9"))
    store.upsert("EndpointSlice", eps("svc-1", "svc", "10.0.0.1"))  # and back again
    assert store.take_changes() == set()
    store.delete("Service", svc())
    assert store.take_changes() == {("ns", "svc")}
    store.upsert("Service", svc())
    assert store.take_changes() == {("ns", "svc")}


def test_invalid_update_keeps_last_good_version() -> None:
    store = fresh()
    good = store.state_for(("ns", "svc"))
    store.upsert("Service", svc(ip="not-an-ip"))
    assert ("Service", "ns", "svc") in store.errors
    assert "spec.clusterIP" in store.error_messages()[0]
    assert store.state_for(("ns", "svc")) == good and store.take_changes() == set()
    store.upsert("Service", svc(sessionAffinity="ClientIP"))
    assert store.errors == {}
    assert store.state_for(("ns", "svc"))[0].service.affinity_timeout == 10800


def test_invalid_first_version_is_ignored_and_error_cleared_on_delete() -> None:
    store = fresh()
    bad = svc("bad", ip="")
    store.upsert("Service", bad)
    assert store.state_for(("ns", "bad")) == ()
    assert ("Service", "ns", "bad") in store.errors
    store.delete("Service", bad)
    assert store.errors == {}


def test_replace_prunes_missing_objects() -> None:
    store = fresh()
    store.replace("EndpointSlice", [])
    assert store.take_changes() == {("ns", "svc")}
    (state,) = store.state_for(("ns", "svc"))
    assert not state.has_any_endpoints
    store.replace("Service", [])
    assert store.state_for(("ns", "svc")) == () and store.full_state().service_ports == ()


def test_a_list_in_pages_prunes_only_at_its_last_page() -> None:
    store = fresh()
    store.replace("Service", [svc("svc", rv="1"), svc("b", "172.30.0.2")])
    store.take_changes()
    # A relist in two pages: "b" is gone, "c" new; nothing goes before the end.
    store.replace("Service", [svc("c", "172.30.0.3")], first=True, last=False)
    assert store.service_keys() == [("ns", "b"), ("ns", "c"), ("ns", "svc")]
    assert store.state_for(("ns", "c"))  # applied as it came
    store.replace("Service", [svc("svc", rv="1")], first=False, last=True)
    assert store.service_keys() == [("ns", "c"), ("ns", "svc")]
    assert store.take_changes() == {("ns", "b"), ("ns", "c")}


def test_a_new_first_page_abandons_an_unfinished_list() -> None:
    store = fresh()
    store.replace("Service", [svc("svc"), svc("b", "172.30.0.2")])
    store.replace("Service", [svc("b", "172.30.0.2")], first=True, last=False)  # then it failed
    store.replace("Service", [svc("svc")], first=True, last=True)  # the next list: b is gone
    assert store.service_keys() == [("ns", "svc")]


def test_slice_endpoints_serve_every_port_and_node() -> None:
    store = ServiceStore(NodeConfig(node_name=NODE))
    two = svc(ports=[{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}])
    sl = eps("svc-1", "svc", "10.0.0.1", node=NODE)
    sl["ports"] = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}]
    store.replace("Service", [two])
    store.replace("EndpointSlice", [sl])
    store.replace("Node", [])
    got = {s.service.port_name: [(e.addr, e.is_local) for e in s.cluster_endpoints or ()]
           for s in store.state_for(("ns", "svc"))}
    assert got == {"http": [("10.0.0.1:8080", True)], "metrics": [("10.0.0.1:9100", True)]}
    other = ServiceStore(NodeConfig(node_name="elsewhere"))
    for kind, objs in (("Service", [two]), ("EndpointSlice", [sl]), ("Node", [])):
        other.replace(kind, objs)
    assert all(not e.is_local for s in other.state_for(("ns", "svc"))
               for e in s.cluster_endpoints or ())


def test_slice_moving_between_services_marks_both() -> None:
    store = fresh()
    store.upsert("Service", svc("other", "172.30.0.2"))
    store.take_changes()
    store.upsert("EndpointSlice", eps("svc-1", "other", "10.0.0.1"))
    assert store.take_changes() == {("ns", "svc"), ("ns", "other")}
    assert cluster_addrs(store) == [] and cluster_addrs(store, "other") == ["10.0.0.1:8080"]


def test_state_is_cached_per_service() -> None:
    store = fresh()
    store.upsert("Service", svc("other", "172.30.0.2"))
    first = store.state_for(("ns", "svc"))
    store.upsert("EndpointSlice", eps("other-1", "other", "10.0.0.9"))
    assert store.state_for(("ns", "svc")) is first  # untouched by another service's slice
    store.upsert("EndpointSlice", eps("svc-1", "svc", "10.0.0.3"))
    assert store.state_for(("ns", "svc")) is not first


def test_our_nodes_zone_reselects_everything() -> None:
    store = fresh()
    store.upsert("EndpointSlice", eps("svc-1", "svc", "10.0.0.1", zone_hint="a"))
    store.upsert("EndpointSlice", eps("svc-2", "svc", "10.0.0.2", zone_hint="b"))
    store.take_changes()
    assert cluster_addrs(store) == ["10.0.0.1:8080", "10.0.0.2:8080"]  # no zone label yet
    store.upsert("Node", node("b"))
    assert store.node()["metadata"]["name"] == NODE
    assert store.take_changes() == {("ns", "svc")}
    assert cluster_addrs(store) == ["10.0.0.2:8080"]
    store.upsert("Node", node("a", name="another-node"))  # not ours: nothing to do
    assert store.take_changes() == set()
    store.delete("Node", node("b"))
    assert store.node() is None
    assert cluster_addrs(store) == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_locality_from_node_name() -> None:
    store = fresh()
    store.upsert("Service", svc(internalTrafficPolicy="Local"))
    store.upsert("EndpointSlice", eps("svc-1", "svc", "10.0.0.1", node=NODE))
    store.upsert("EndpointSlice", eps("svc-2", "svc", "10.0.0.2", node="elsewhere"))
    (state,) = store.state_for(("ns", "svc"))
    assert state.cluster_endpoints is None
    assert [e.addr for e in state.local_endpoints] == ["10.0.0.1:8080"]
    assert state.local_ready_count == 1


def test_unnamed_objects_are_ignored() -> None:
    store = fresh()
    store.upsert("Service", {"kind": "Service", "metadata": {}})
    store.delete("Service", {"kind": "Service"})
    assert store.take_changes() == set()


# --- wrongly typed objects (issue 12, item 2) ------------------------------------------

def _served(store: ServiceStore, name: str = "svc") -> tuple:
    return tuple((s.service.cluster_ip, s.service.port) for s in store.state_for(("ns", name)))


BAD_UPDATES = [
    # (how the good Service is spoiled, a substring of the reason)
    (lambda o: o["metadata"].update(labels={1: "a", "b": "c"}),
     "metadata.labels: mapping key 1 (int) is not a string"),
    (lambda o: o["metadata"].update(labels={None: "a"}), "mapping key null"),
    (lambda o: o["spec"].update(selector={("a",): "b"}),
     "spec.selector: mapping key a tuple of 1 items (tuple) is not a string"),
    (lambda o: o["spec"].update(extra={1, 2}), "spec.extra: a set value cannot be held"),
    (lambda o: o["spec"].update(extra=b"x"), "spec.extra: a bytes value"),
    (lambda o: o["spec"].update(extra=float("nan")), "spec.extra: nan is not a JSON number"),
    (lambda o: o["metadata"].update(annotations={"a": 1}),
     "metadata.annotations['a']: expected a string, got 1"),
    (lambda o: o["metadata"].update(labels=["a"]), "metadata.labels: expected a mapping"),
    (lambda o: o["spec"].update(ports=[{"port": 2 ** 20000}]),
     "spec.ports[0].port: an integer of 20,001 bits is too large"),
    (lambda o: o["spec"].update(ports="80"), "spec.ports: expected a list, got str"),
    (lambda o: o["spec"]["ports"][0].update(name="HTTP"),
     "spec.ports[0].name: 'HTTP' is not a DNS-1123 label"),
]


def test_wrongly_typed_update_is_refused_and_the_last_good_version_served() -> None:
    """main: TypeError: '<' not supported (sorting mixed keys for the fingerprint)."""
    for spoil, reason in BAD_UPDATES:
        store = ServiceStore(NodeConfig(node_name=NODE), log_invalid=False)
        good = svc()
        store.replace("Service", [good])
        before = _served(store)
        bad = copy.deepcopy(good)
        bad["spec"]["clusterIP"] = "172.30.0.9"
        spoil(bad)
        store.replace("Service", [bad])
        assert _served(store) == before, reason
        (msg,) = store.error_messages()
        assert msg.startswith("Service ns/svc: ") and reason in msg, (msg, reason)
        assert store.internal_errors == 0
        store.upsert("Service", bad)  # the watch path too
        assert _served(store) == before


def test_objects_that_are_not_mappings_or_badly_named_are_ignored(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyagent")
    store = ServiceStore(NodeConfig(node_name=NODE))
    store.replace("Service", [svc("a")])
    for bad in ([1, 2], "x", None, {"metadata": "x"}, {"metadata": {"name": 5}},
                {"metadata": {"name": 'a"\n-j ACCEPT'}}, {"metadata": {"name": "a" * 64}},
                {"metadata": {"name": "ok", "namespace": "Bad_NS"}}):
        store.upsert("Service", bad)  # type: ignore[arg-type]
        store.delete("Service", bad)  # type: ignore[arg-type]
    assert store.service_keys() == [("ns", "a")]
    assert store.internal_errors == 0
    assert "ignoring a Service without a usable name: metadata.name: 'a\"\\n-j ACCEPT' " \
           "is not a DNS-1035 label" in caplog.text
    assert "\n-j" not in caplog.text  # names are quoted in logs, never raw


def test_node_fields_health_reads_are_checked() -> None:
    store = ServiceStore(NodeConfig(node_name=NODE), log_invalid=False)
    good = node("z1")
    store.replace("Node", [good])
    for spec in ({"taints": "x"}, {"taints": [1]}, {"taints": [{"key": 1}]}, []):
        store.replace("Node", [{**good, "spec": spec}])
        assert store.node() == good
        assert ("Node", "", NODE) in store.errors


def _triggered(slice_: dict, stamp: str) -> dict:
    out = copy.deepcopy(slice_)
    out["metadata"].setdefault("annotations", {})[
        "endpoints.kubernetes.io/last-change-trigger-time"] = stamp
    return out


def test_trigger_times_of_endpoint_slice_changes_are_taken_once() -> None:
    """kube-proxy times network programming from the EndpointSlice's
    last-change-trigger-time: changes after the store started, each once."""
    store = ServiceStore(NodeConfig(node_name=NODE), clock=lambda: 1_700_000_000.0)
    store.upsert("Service", svc())
    s1 = _triggered(eps("s1", "svc", "10.0.0.1"), "2023-11-14T22:13:25Z")  # start + 5 s
    store.upsert("EndpointSlice", s1)
    store.upsert("EndpointSlice", _triggered(eps("s2", "svc", "10.0.0.2"),
                                             "2023-11-14T23:13:30.5+01:00"))  # + 10.5 s
    store.upsert("EndpointSlice", _triggered(eps("old", "svc", "10.0.0.3"),
                                             "2023-11-14T22:00:00Z"))  # before the start
    store.upsert("EndpointSlice", _triggered(eps("bad", "svc", "10.0.0.4"), "yesterday"))
    store.upsert("EndpointSlice", eps("none", "svc", "10.0.0.5"))
    assert store.take_trigger_times() == [1_700_000_005.0, 1_700_000_010.5]
    assert store.take_trigger_times() == []
    store.upsert("EndpointSlice", s1)  # the same version again: no change, not timed
    assert store.take_trigger_times() == []
    store.delete("EndpointSlice", _triggered(s1, "2023-11-14T22:13:40Z"))
    assert store.take_trigger_times() == [1_700_000_020.0]
