"""`pyagent maps dump --map NAME` on the socket path: socket rev-NAT and
session-affinity entries made by real connections in a namespace lab."""

from __future__ import annotations

import json

import pytest
from agentlab import agent_lab, service, slice_

pytestmark = pytest.mark.root

VIP, STICKY = "10.96.0.10", "10.96.0.11"
TCP = [("http", "TCP", 80)]
TARGET = [("http", "TCP", 8080)]


def test_sockrev_and_affinity_entries() -> None:
    with agent_lab(3) as a:
        pods = a.lab.pods
        a.write("svc.yaml", service("echo", [VIP], TCP),
                service("sticky", [STICKY], TCP, sessionAffinity="ClientIP"))
        a.write("eps.yaml",
                slice_("echo", "echo-1", 4, TARGET, [(p.ip4, True) for p in pods]),
                slice_("sticky", "sticky-1", 4, TARGET, [(p.ip4, True) for p in pods]))
        a.start()
        a.wait(lambda f: len(f.get((VIP, 80, "TCP"), ())) == 3
               and len(f.get((STICKY, 80, "TCP"), ())) == 3, "two services")
        echo = a.lab.client(VIP, 80, count=10)
        sticky = a.lab.client(STICKY, 80, count=5)
        assert len(sticky.counts) == 1  # affinity: one backend for this netns

        def dump(name: str) -> dict:
            r = a.pyagent("maps", "dump", "--bpffs", a.bpffs, "--map", name, "--json")
            assert r.returncode == 0, r.stderr
            return {m["name"]: m["entries"] for m in json.loads(r.stdout)["maps"]}

        sock = dump("sockrev")
        assert set(sock) == {"lb4_sockrev", "lb6_sockrev"}
        to_vip = [e for e in sock["lb4_sockrev"] if e["value"]["address"] == VIP]
        # one entry per connect(): socket cookie + the backend it reached -> the VIP
        assert len({e["key"]["cookie"] for e in to_vip}) == 10
        by_ip = {p.ip4: p.name for p in pods}
        assert sorted(by_ip[e["key"]["address"]] for e in to_vip) == \
            sorted(d["pod"] for d in echo.details)
        assert {(e["key"]["port"], e["value"]["port"]) for e in to_vip} == {(8080, 80)}

        [aff] = dump("affinity")["lb_affinity"]
        ids = {b["id"]: b["address"] for b in json.loads(a.pyagent(
            "maps", "dump", "--bpffs", a.bpffs, "--json").stdout)["backends"]}
        assert aff["key"]["netns"] is True and aff["key"]["client"] > 0
        assert by_ip[ids[aff["value"]["backend_id"]]] == next(iter(sticky.counts))
        assert 0 <= aff["value"]["age"] < 60
        # table output names the map and its fill
        r = a.pyagent("maps", "dump", "--bpffs", a.bpffs, "--map", "lb_affinity")
        assert r.returncode == 0 and r.stdout.startswith("lb_affinity: 1 / ")
