"""`pyagent services list` (table, wide, JSON) against golden files: an
eTP=Local NodePort shows as two rows told apart by scope, with affinity,
algorithm, backend state and connection counts.
PYAGENT_UPDATE_GOLDEN=1 regenerates the files after an intended change."""

from __future__ import annotations

import json

from pyagent.cli import services as services_view

from .test_status_golden import check_golden

DUMP = {"services": [
    {"frontend": {"address": "10.96.0.10", "port": 80, "protocol": "TCP", "scope": "internal"},
     "revNatId": 1, "count": 2, "qcount": 1, "flags": ["CLUSTER_IP", "AFFINITY"],
     "algorithm": "random", "affinityTimeout": 10800,
     "backends": [
         {"slot": 1, "backendId": 11, "address": "10.244.0.10", "port": 8080, "state": "active"},
         {"slot": 2, "backendId": 12, "address": "10.244.1.10", "port": 8080, "state": "active"},
         {"slot": 3, "backendId": 13, "address": "10.244.1.11", "port": 8080,
          "state": "terminating"}]},
    {"frontend": {"address": "192.168.0.2", "port": 30080, "protocol": "TCP",
                  "scope": "external"},
     "revNatId": 2, "count": 1, "qcount": 0, "flags": ["NODE_PORT", "LOCAL_ETP"],
     "algorithm": "maglev", "affinityTimeout": 0,
     "backends": [{"slot": 1, "backendId": 11, "address": "10.244.0.10", "port": 8080,
                   "state": "active"}]},
    {"frontend": {"address": "192.168.0.2", "port": 30080, "protocol": "TCP",
                  "scope": "internal"},
     "revNatId": 3, "count": 2, "qcount": 0, "flags": ["NODE_PORT", "LOCAL_ETP"],
     "algorithm": "maglev", "affinityTimeout": 0,
     "backends": [
         {"slot": 1, "backendId": 11, "address": "10.244.0.10", "port": 8080, "state": "active"},
         {"slot": 2, "backendId": 12, "address": "10.244.1.10", "port": 8080,
          "state": "active"}]},
    {"frontend": {"address": "fd00:96::20", "port": 53, "protocol": "UDP", "scope": "internal"},
     "revNatId": 4, "count": 0, "qcount": 0, "flags": ["CLUSTER_IP"], "algorithm": "random",
     "affinityTimeout": 0, "backends": []},
]}
FRONTENDS = [  # the status file's "frontends" (FrontendInfo.to_json)
    {"address": a, "port": p, "protocol": proto, "scope": scope, "service": svc}
    for a, p, proto, scope, svc in [
        ("10.96.0.10", 80, "TCP", "internal", "shop/web:http"),
        ("192.168.0.2", 30080, "TCP", "external", "shop/web:http"),
        ("192.168.0.2", 30080, "TCP", "internal", "shop/web:http"),
        ("fd00:96::20", 53, "UDP", "internal", "kube-system/dns:dns")]]
NEW = {11: 120, 12: 80, 13: 3}
ACTIVE = {11: 4, 12: 1}


def rows() -> list[dict]:
    return services_view.service_rows(DUMP, FRONTENDS, NEW, ACTIVE)


def test_table() -> None:
    check_golden("services-list.txt", services_view.render(rows(), "table") + "\n")


def test_wide_table() -> None:
    check_golden("services-list-wide.txt", services_view.render(rows(), "wide") + "\n")


def test_json() -> None:
    text = services_view.render(rows(), "json")
    check_golden("services-list.json", text + "\n")
    r = json.loads(text)
    assert [x["scope"] for x in r if x["frontend"] == "192.168.0.2:30080/TCP"] == \
        ["external", "internal"]
    assert r[0]["backends"] == ["10.244.0.10:8080", "10.244.1.10:8080", "10.244.1.11:8080"]
    assert r[3]["noBackends"] == "reject" and r[3]["endpoints"] == []


def test_yaml_round_trips_to_the_json() -> None:
    import yaml

    assert yaml.safe_load(services_view.render(rows(), "yaml")) == rows()


def test_watch_redraws_until_interrupted(monkeypatch, capsys) -> None:
    import argparse

    draws = []

    def fake_sleep(seconds: float) -> None:
        draws.append(seconds)
        if len(draws) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(services_view, "collect", lambda bpffs: rows())
    monkeypatch.setattr(services_view.time, "sleep", fake_sleep)
    args = argparse.Namespace(bpffs="/x", json=False, output="table", watch=0.5)
    assert services_view.run_list(args) == 0
    out = capsys.readouterr().out
    assert draws == [0.5, 0.5] and out.count("\x1b[H\x1b[2J") == 2
    assert out.count("shop/web:http") == 6  # three rows, drawn twice
