"""The kube-proxy and process metrics beyond the sync basics: process_*,
build info, full vs partial sync histograms, Services with a Local policy
and no local endpoints, API client requests; and no _created series."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.state import ServicePortState
from pyagent.observe.metrics import Metrics, split_service
from pyagent.sources.kube_client import instrument


def sps(name: str, local: bool, *, itp: bool = False, etp: bool = False,
        node_port: int = 0) -> ServicePortState:
    sp = ServicePort("ns", name, "http", "TCP", 80, 4, "10.96.0.1", node_port=node_port,
                     internal_policy_local=itp, external_policy_local=etp)
    ep = Endpoint("10.244.0.5", 8080, is_local=local)
    return ServicePortState(sp, (ep,), (ep,) if local else (), (ep,), True)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_process_build_info_and_no_created_series() -> None:
    m = Metrics(mode="ebpf")
    m.sync_errors_total.inc()
    text = generate_latest(m.registry).decode()
    assert "process_cpu_seconds_total" in text and "process_start_time_seconds" in text
    assert 'pyagent_build_info{mode="ebpf"' in text
    assert "_created" not in text


def test_full_and_partial_syncs_are_separate_histograms() -> None:
    m = Metrics()
    m.extra.synced(0.5, True, {})
    m.extra.synced(0.01, False, {})
    m.extra.synced(0.02, False, {})
    assert value(m, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert value(m, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 2


def test_no_local_endpoints_follows_partial_and_full_syncs() -> None:
    m = Metrics()

    def count(policy: str) -> float | None:
        return value(m, "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                     traffic_policy=policy)

    m.extra.synced(0.1, True, {("ns", "a"): (sps("a", local=False, itp=True),),
                               ("ns", "b"): (sps("b", local=True, itp=True),),
                               ("ns", "c"): (sps("c", local=False, etp=True,
                                                 node_port=30000),)})
    assert (count("internal"), count("external")) == (1, 1)
    m.extra.synced(0.1, False, {("ns", "a"): (sps("a", local=True, itp=True),)})
    assert count("internal") == 0  # a got a local endpoint
    m.extra.synced(0.1, True, {})  # a full sync of nothing: every Service gone
    assert count("external") == 0


def test_api_client_requests_are_counted_by_code_method_and_host() -> None:
    class Boom(Exception):
        status = 410

    calls = iter([SimpleNamespace(status=200), Boom()])

    def request(method: str, url: str, **kw: object) -> object:
        r = next(calls)
        if isinstance(r, Exception):
            raise r
        return r

    pool = SimpleNamespace(request=request)
    client = SimpleNamespace(rest_client=SimpleNamespace(pool_manager=pool),
                             configuration=SimpleNamespace(host="https://10.0.0.1:6443"))
    m = Metrics()
    instrument(client, m.extra.request)
    pool.request("GET", "https://10.0.0.1:6443/api/v1/services")
    with pytest.raises(Boom):
        pool.request("get", "https://10.0.0.1:6443/api/v1/services")
    host = "10.0.0.1:6443"
    assert value(m, "rest_client_requests_total", code="200", method="GET", host=host) == 1
    assert value(m, "rest_client_requests_total", code="410", method="GET", host=host) == 1
    assert value(m, "rest_client_request_duration_seconds_count", verb="GET", host=host) == 2


def test_service_labels_split() -> None:
    assert split_service("default/web:http") == ["default", "web", "http"]
    assert split_service("default/web:") == ["default", "web", ""]


def test_the_sources_raw_requests_are_counted(tmp_path) -> None:
    """kube_http's GETs (what the kube source lists and watches with) and
    their error codes, through the real client against the fake API server."""
    from kubeapi import FakeKubeAPI

    from pyagent.sources.kube_client import make_api_client
    from pyagent.sources.kube_http import ApiError, getter

    api = FakeKubeAPI().start()
    try:
        client = make_api_client(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        m = Metrics()
        instrument(client, m.extra.request)
        resp = getter(client, "/api/v1/services")()
        assert b"ServiceList" in resp.read()
        resp.release_conn()
        with pytest.raises(ApiError):
            getter(client, "/api/v1/nothing")()
        host = client.configuration.host.split("://", 1)[1]
        assert value(m, "rest_client_requests_total", code="200", method="GET", host=host) == 1
        assert value(m, "rest_client_requests_total", code="404", method="GET", host=host) == 1
        client.close()
    finally:
        api.stop()
