"""The userspace mode without root: the balancer (round-robin, ClientIP
affinity) and the REDIRECT portals, with the conformance flows walked
through the portal rules (verdict and endpoint set; userspace never
masquerades, the proxy connects from the node instead)."""

from __future__ import annotations

import ipaddress

import pytest

from pyagent.dataplanes.userspace.dataplane import UserspaceDataplane
from pyagent.dataplanes.userspace.proxy import Balancer

from .conformance_adapter import expected_result
from .test_modes_iptables import (
    CFG,
    EP1,
    SCENARIOS,
    FakeExec,
    Packet,
    parse_restore,
    scenario_state,
    sps,
    target,
    walk,
)
from .test_modes_iptables import FLOWS as VECTORS

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


def test_round_robin_without_affinity() -> None:
    b = Balancer([A, B, C])
    assert [b.pick("1.1.1.1") for _ in range(6)] == [A, B, C, A, B, C]


def test_affinity_pins_a_client_until_idle_for_the_timeout() -> None:
    b = Balancer([A, B, C], affinity=10)
    first = b.pick("1.1.1.1", now=0)
    assert all(b.pick("1.1.1.1", now=t) == first for t in (1, 5, 14))  # refreshed on use
    other = b.pick("2.2.2.2", now=14)
    assert other != first
    assert b.pick("1.1.1.1", now=30) != first or len(b.endpoints) == 1  # expired: rotate on


def test_affinity_forgets_endpoints_that_went_away() -> None:
    b = Balancer([A, B], affinity=100)
    first = b.pick("1.1.1.1", now=0)
    b.update([e for e in (A, B) if e != first], 100)
    assert b.pick("1.1.1.1", now=1) != first
    assert Balancer([]).pick("1.1.1.1") is None


class FakeProxy:
    def __init__(self) -> None:
        self.listeners: dict = {}
        self.dropped: list = []

    def ensure(self, lid, proto, family, endpoints, affinity) -> int:
        port = self.listeners.get(lid, (20000 + len(self.listeners),))[0]
        self.listeners[lid] = (port, proto, endpoints, affinity)
        return port

    def drop(self, lid) -> None:
        self.dropped.append(lid)
        self.listeners.pop(lid, None)

    def close(self) -> None:
        pass


def dataplane(config=CFG, families=(4,)):
    ex, proxy = FakeExec(), FakeProxy()
    return UserspaceDataplane(config, ex=ex, families=families, proxy=proxy), ex, proxy


def test_portals_redirect_to_one_listener_per_endpoint_set() -> None:
    dp, ex, proxy = dataplane()
    s = sps(local=(EP1,), node_port=30001, external_policy_local=True, affinity_timeout=30)
    dp.sync({("ns", "a"): (s,)}, full=True)
    nat = parse_restore(ex.restores[-1])["nat"]
    svc = [r for r in nat["PYAUSR-SERVICES"] if "172.30.0.10/32" in r]
    assert len(svc) == 1 and target(svc[0]) == "REDIRECT"  # no masquerade rules
    assert {lid[1] for lid in proxy.listeners} == {"cluster", "local"}
    local = next(v for k, v in proxy.listeners.items() if k[1] == "local")
    assert local[2] == [("10.0.0.1", 8080)] and local[3] == 30
    assert not any("MARK-MASQ" in " ".join(r) for rules in nat.values() for r in rules
                   if rules is not nat.get("PYAUSR-MASQ-NONPOD"))
    dp.sync({("ns", "a"): (sps(),)}, full=False)  # eTP back to Cluster: local set unused
    assert [lid[1] for lid in proxy.dropped] == ["local"]
    dp.sync({("ns", "a"): ()}, full=False)
    assert not proxy.listeners


def test_sctp_is_reported_not_raised() -> None:
    dp, _, _ = dataplane()
    status = dp.sync({("ns", "a"): (sps(protocol="SCTP"),), ("ns", "b"): (sps(name="b"),)},
                     full=True)
    assert status[("ns", "b")] is None
    assert status[("ns", "a")] == "not proxied in userspace mode: ns/a:http/SCTP"


@pytest.mark.skipif(not SCENARIOS, reason="conformance vectors not found")
@pytest.mark.parametrize("scn", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_conformance_flows_through_the_portals(scn: dict) -> None:
    state, config = scenario_state(scn, VECTORS.get("backend_defaults") or {})
    dp, ex, proxy = dataplane(config, families=(4, 6))
    grouped: dict = {}
    for s in state.service_ports:
        grouped.setdefault((s.service.namespace, s.service.name), []).append(s)
    status = dp.sync({k: tuple(v) for k, v in grouped.items()}, full=True)
    assert all("SCTP" in v for v in status.values() if v)
    by_port = {v[0]: v[2] for v in proxy.listeners.values()}
    tables = {4: parse_restore(ex.restores[0]), 6: parse_restore(ex.restores[1])}
    bad = []
    for flow in scn["flows"]:
        if flow.get("protocol") == "SCTP":
            continue  # not proxied in userspace mode (README, Modes)
        src, dst = ipaddress.ip_address(flow["source_ip"]), ipaddress.ip_address(flow["dest_ip"])
        p = Packet(src, dst, flow["dest_port"], flow.get("protocol") or "TCP")
        t = tables[dst.version]
        nat = walk({c.replace("PYAUSR-", "PYAGENT-"): [
            [a.replace("PYAUSR-", "PYAGENT-") for a in r] for r in rules]
            for c, rules in t["nat"].items()}, "PYAGENT-SERVICES", p)
        redirected = [o for o in nat if o[0] == "REDIRECT"]
        want = expected_result(flow)
        if redirected:
            got = {"verdict": "DNAT", "endpoints": sorted(
                f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                for o in redirected for ip, port in by_port[int(o[1])])}
        else:
            mark = next((o[2] for o in nat if o[0] == "CONTINUE"), 0)
            got = {"verdict": "NO_MATCH", "endpoints": []}
            for chain in ("PYAUSR-FIREWALL", "PYAUSR-SERVICES"):
                out = [o for o in walk(t["filter"], chain,
                                       Packet(src, dst, p.dport, p.proto, mark))
                       if o[0] in ("DROP", "REJECT")]
                if out:
                    got = {"verdict": out[0][0], "endpoints": []}
                    break
        want.pop("masquerade")
        if got != want:
            bad.append((flow["name"], got, want))
    assert not bad, bad


def test_the_portal_renderer_is_pure() -> None:
    """Rendering names the listeners a Service needs and binds nothing; the
    dataplane binds them and fills their ports in before writing."""
    from pyagent.dataplanes.userspace.dataplane import PortalRenderer, bind_portals

    s = sps(local=(EP1,), node_port=30001, external_policy_local=True)
    frag = PortalRenderer(CFG, 4).render(s)  # no proxy exists at all
    assert set(frag.listeners) == {(s.key, "cluster"), (s.key, "local")}
    ports = dict(zip(frag.listeners, (41000, 41001), strict=True))
    bound = bind_portals(frag, ports)
    rules = [*bound.services, *(r for rs in bound.nat_chains.values() for r in rs)]
    assert {r.split("--to-ports ")[1] for r in rules if "REDIRECT" in r} == {"41000", "41001"}
    assert not any("@" in r for r in rules)
