"""`pyagent status` output against golden files, and its exit status.

The golden files are the operator's contract; after an intended change,
regenerate them with PYAGENT_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from pyagent.cli import status as status_cmd

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NOW = 1_800_000_000.0
HOOKS = ["lb4_connect", "lb4_sendmsg", "lb6_connect", "lb6_sendmsg"]

STATUS = {
    "mode": "ebpf", "bpffs": "/sys/fs/bpf/pyagent", "cgroup": "/run/pyagent/cgroupv2",
    "agentPid": 4242, "agentRunning": True, "lastSync": NOW - 3.25, "lastSyncSeconds": 0.0123,
    "serviceErrors": {"shop/cart:http": "lb4_services is full"},
    "refused": [{"service": "shop/cart:http", "reason": "map_full", "map": "lb4_services",
                 "message": "lb4_services is full (1000 entries)"}],
    "objectErrors": [], "sourceErrors": [],
    "maps": {"lb4_services": {"maxEntries": 1000, "entries": 920, "fill": 0.92},
             "lb4_backends": {"maxEntries": 1000, "entries": 12, "fill": 0.012}},
    "frontends": 7,
    "attachments": {h: [10 + i] for i, h in enumerate(HOOKS)},
    "datapath": {"defines": {"LB_HAVE_SET_RETVAL": 1}, "hooks": HOOKS, "attach": "link",
                 "degraded": [], "missing": []},
    "version": "0.1.0", "agentVersion": "0.1.0", "nodeName": "node-1", "statusFile": True,
    "source": {"kind": "kubernetes", "where": "https://10.0.0.1:6443", "connected": True,
               "synced": True, "problem": ""},
    "lastEvent": NOW - 12.5, "syncPeriod": 30.0,
    "healthzAddress": "0.0.0.0:10256", "metricsAddress": "127.0.0.1:10249",
    "interfaces": {"eth0": {"ingress": "lb_netdev_ingress", "egress": "lb_egress"}},
    "monitors": {"listening": [77], "stale": [], "lost": 0},
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PYAGENT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs (PYAGENT_UPDATE_GOLDEN=1 regenerates)"


def test_healthy_status_matches_golden() -> None:
    check_golden("status.txt", status_cmd.render(STATUS, NOW) + "\n")
    code, problems, warnings = status_cmd.assess(STATUS, NOW)
    assert code == 0 and problems == []
    assert any("refused shop/cart:http" in w for w in warnings)
    assert any("lb4_services 92% full" in w for w in warnings)


def test_unhealthy_status_matches_golden_and_fails() -> None:
    s = copy.deepcopy(STATUS)
    s["source"].update(connected=False, problem="Service: failing for 40s (12 attempts)")
    s["lastSync"] = NOW - 200
    s["attachments"]["lb6_connect"] = []
    s["interfaces"]["eth1"] = {}
    check_golden("status-unhealthy.txt", status_cmd.render(s, NOW) + "\n")
    code, problems, _ = status_cmd.assess(s, NOW)
    assert code == status_cmd.EXIT_UNHEALTHY
    assert len(problems) == 4, problems


def test_agent_down_and_nothing_to_show() -> None:
    s = copy.deepcopy(STATUS)
    s["agentRunning"] = False
    assert status_cmd.assess(s, NOW)[:2] == (1, ["the agent is not running"])
    empty = {"bpffs": "/nowhere", "statusFile": False, "maps": {}}
    code, problems, _ = status_cmd.assess(empty, NOW)
    assert code == status_cmd.EXIT_NOTHING and "nothing to show" in problems[0]


def test_status_json_is_serialisable() -> None:
    json.dumps(STATUS)  # the golden input is what --json prints (plus the verdict)
