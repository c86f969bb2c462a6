"""The nftables mode's generated table (no root, no kernel).

1. Shape: verdict maps point at per-service chains; numgen spreads over
   endpoint chains; affinity sets; no-endpoint maps reject or drop.
2. Transactions: a partial sync only touches the changed Service (elements,
   chains), deletes dead chains after the elements pointing at them and
   referrers before the chains they jump to.
3. Every conformance flow walked through the generated table (maps, sets,
   chains) gives trace.py's verdict, endpoint set and masquerade bit.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.nftables.dataplane import Desired, NftablesDataplane, transaction

from .conformance_adapter import SHARED, expected_result, load
from .test_modes_iptables import scenario_state

CFG = NodeConfig(node_name="n1", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
EP1 = Endpoint("10.0.0.1", 8080, node_name="n1", is_local=True)
EP2 = Endpoint("10.0.0.2", 8080, node_name="n2")


def sps(eps=(EP1, EP2), local=None, has_any=True, **kw) -> ServicePortState:
    sp = ServicePort("ns", kw.pop("name", "a"), "http", kw.pop("protocol", "TCP"), 80, 4,
                     kw.pop("cluster_ip", "172.30.0.10"), **kw)
    return ServicePortState(sp, tuple(eps), local, tuple(eps), has_any)


class FakeNft:
    def __init__(self) -> None:
        self.scripts: list[str] = []

    def run(self, script: str) -> None:
        self.scripts.append(script)

    def objects(self):
        return None

    def delete_table(self) -> bool:
        return True


def synced(*states: ServicePortState, config: NodeConfig = CFG):
    nft = FakeNft()
    dp = NftablesDataplane(config, nft=nft)
    dp.setup()
    dp.sync({(s.service.namespace, s.service.name): (s,) for s in states}, full=True)
    return dp, nft


# --- 1. shape -------------------------------------------------------------------------

def test_cluster_ip_is_one_map_element_and_numgen_over_endpoints() -> None:
    dp, _ = synced(sps())
    d = dp.written
    verdict = d.elements["service-ips4"]["172.30.0.10 . tcp . 80"]
    cip = verdict.removeprefix("goto ")
    assert d.chains[cip][0] == "ip saddr != @pod-cidrs4 jump mark-for-masquerade"
    svc = d.chains[cip][1].removeprefix("goto ")
    assert re.fullmatch(r"numgen random mod 2 == 0 goto sep-\w+", d.chains[svc][0])
    assert re.fullmatch(r"goto sep-\w+", d.chains[svc][1])
    seps = [re.findall(r"goto (sep-\w+)", r)[0] for r in d.chains[svc]]
    assert [d.chains[s][-1] for s in seps] == ["meta l4proto tcp dnat ip to 10.0.0.1:8080",
                                              "meta l4proto tcp dnat ip to 10.0.0.2:8080"]
    # the services chain looks the map up once per family: no per-service rules
    assert d.chains["services"][0] == "ip daddr . meta l4proto . th dport vmap @service-ips4"


def test_affinity_uses_dynamic_timeout_sets() -> None:
    dp, _ = synced(sps(affinity_timeout=60))
    d = dp.written
    aff = [n for n in d.sets if n.startswith("aff-")]
    assert len(aff) == 2 and all("timeout 60s" in d.sets[n] for n in aff)
    svc = next(c for c in d.chains if c.startswith("svc-"))
    assert d.chains[svc][0].startswith("ip saddr @aff-")


def test_no_endpoints_reject_and_policy_drop() -> None:
    dp, _ = synced(sps(eps=(), has_any=False, node_port=30001),
                   sps(name="b", cluster_ip="172.30.0.11", local=(), internal_policy_local=True))
    e = dp.written.elements
    assert e["no-endpoint-services4"]["172.30.0.10 . tcp . 80"] == "goto reject-chain"
    assert e["no-endpoint-nodeports4"]["tcp . 30001"] == "goto reject-chain"
    assert e["no-endpoint-services4"]["172.30.0.11 . tcp . 80"] == "drop"
    assert "172.30.0.10 . tcp . 80" not in e["service-ips4"]


# --- 2. transactions --------------------------------------------------------------------

def test_partial_sync_touches_only_the_changed_service() -> None:
    a, b = sps(name="a"), sps(name="b", cluster_ip="172.30.0.11")
    dp, nft = synced(a, b)
    before = dp.written
    dp.sync({("ns", "a"): (sps(name="a", eps=(EP1,)),)}, full=False)
    script = nft.scripts[-1]
    b_chains = {c for c in before.chains if c.endswith(_port_hash(b))}
    assert not any(c in script for c in b_chains)
    lines = script.splitlines()
    # one endpoint left: the svc chain is rewritten, EP2's chain deleted last
    assert any(line.startswith("flush chain inet pyagent svc-") for line in lines)
    assert lines[-1].startswith("delete chain inet pyagent sep-")
    assert "flush map" not in script
    dp.sync({("ns", "a"): (sps(name="a", eps=(EP1,)),)}, full=False)
    assert nft.scripts[-1] == script  # no change: no new transaction


def test_deleting_a_service_deletes_elements_then_referrers_then_targets() -> None:
    dp, nft = synced(sps(node_port=30001))
    dp.sync({("ns", "a"): ()}, full=False)
    lines = nft.scripts[-1].splitlines()
    elem = next(i for i, x in enumerate(lines) if x.startswith("delete element"))
    order = [x.split()[-1].split("-")[0] for x in lines if x.startswith("delete chain")]
    assert elem < min(i for i, x in enumerate(lines) if x.startswith("delete chain"))
    assert order == sorted(order, key=["cip", "ext", "svc", "sep"].index)


def test_full_sync_flushes_maps_and_removes_leftovers() -> None:
    have, want = Desired(), Desired(chains={"services": ()}, sets={"m": "type x : verdict;"},
                                    elements={"m": {}})
    script = transaction(have, want, True, ({"svc-OLD"}, {"aff-OLD"}))
    assert "flush map inet pyagent m" in script
    assert script.index("delete chain inet pyagent svc-OLD") < script.index(
        "delete set inet pyagent aff-OLD")


def _port_hash(s: ServicePortState) -> str:
    from pyagent.dataplanes.iptables.policy import port_id
    return port_id(s)


# --- 3. conformance flows through a table walker ------------------------------------------

def _in(addr, elems) -> bool:
    for e in elems:
        net = ipaddress.ip_network(e, strict=False)
        if net.version == addr.version and addr in net:
            return True
    return False


class Walker:
    """Evaluates the rule forms the nftables renderer writes."""

    def __init__(self, d: Desired, src, dst, dport: int, proto: str) -> None:
        self.d, self.src, self.dst = d, src, dst
        self.dport, self.proto = dport, proto.lower()
        self.fam = "ip6" if dst.version == 6 else "ip"

    def verdict(self, v: str, mark: int) -> tuple[list, bool]:
        """(outcomes, whether it was a goto); CONTINUE outcomes carry the mark."""
        v = v.strip()
        if v.startswith(("goto ", "jump ")):
            kind, chain = v.split()
            if chain == "mark-for-masquerade":
                return [("CONTINUE", None, mark | 0x4000)], False
            return self.chain(chain, mark), kind == "goto"
        return [({"drop": "DROP", "reject": "REJECT", "return": "CONTINUE"}[v], None, mark)], \
            v == "return"

    def chain(self, name: str, mark: int = 0) -> list[tuple[str, str | None, int]]:
        outcomes: list = []
        for rule in self.d.chains[name]:
            res = self.rule(rule, mark)
            if res is None:
                continue
            got, goto = res
            outcomes += [o for o in got if o[0] != "CONTINUE"]
            cont = [o for o in got if o[0] == "CONTINUE"]
            if goto:  # a goto'd chain returns to our caller
                return outcomes + cont
            if not cont:
                return outcomes
            mark = cont[0][2]
        return outcomes + [("CONTINUE", None, mark)]

    def rule(self, rule: str, mark: int):
        f = self.fam
        m = re.fullmatch(r"(ip6?) daddr \. meta l4proto \. th dport vmap @(\S+)", rule)
        if m:
            if m[1] != f:
                return None
            v = self.d.elements[m[2]].get(f"{self.dst} . {self.proto} . {self.dport}")
            return self.verdict(v, mark) if v else None
        m = re.fullmatch(r"(ip6?) daddr @(\S+) meta l4proto \. th dport vmap @(\S+)", rule)
        if m:
            if m[1] != f or not _in(self.dst, self.d.elements[m[2]]):
                return None
            v = self.d.elements[m[3]].get(f"{self.proto} . {self.dport}")
            return self.verdict(v, mark) if v else None
        m = re.fullmatch(r"(ip6?) (saddr|daddr) (!= )?(@\S+|\{ [^}]* \}|\S+) (.*)", rule)
        if m:
            if m[1] != f:
                return None
            addr = self.src if m[2] == "saddr" else self.dst
            what = m[4]
            if what.startswith("@aff-"):
                hit = False  # a new client has no affinity entry
            elif what.startswith("@"):
                hit = _in(addr, self.d.elements[what[1:]])
            elif what.startswith("{"):
                hit = _in(addr, [x.strip() for x in what.strip("{} ").split(",")])
            else:
                hit = _in(addr, [what])
            if hit == bool(m[3]):
                return None
            return self.verdict(m[5], mark)
        m = re.fullmatch(r"numgen random mod (\d+) == 0 (goto \S+)", rule)
        if m:  # random: both the match and the fall-through are possible
            out, _ = self.verdict(m[2], mark)
            return out + [("CONTINUE", None, mark)], False
        m = re.fullmatch(r"meta l4proto (\w+) dnat ip6? to (\S+)", rule)
        if m:
            return ([("DNAT", m[2], mark)], False) if m[1] == self.proto else None
        if rule.startswith("update @"):
            return None
        return self.verdict(rule, mark)


def trace(d: Desired, src, dst, dport: int, proto: str) -> dict:
    w = Walker(d, src, dst, dport, proto)
    none = {"endpoints": [], "masquerade": False}
    for chain in ("firewall-check",):
        out = [o for o in w.chain(chain) if o[0] in ("DROP", "REJECT")]
        if out:
            return {"verdict": out[0][0], **none}
    nat = w.chain("services")
    dnat = [o for o in nat if o[0] == "DNAT"]
    if dnat:
        return {"verdict": "DNAT", "endpoints": sorted({o[1] for o in dnat}),
                "masquerade": any(o[2] & 0x4000 for o in dnat)}
    if any(o[0] == "DROP" for o in nat):
        return {"verdict": "DROP", **none}
    for chain in ("endpoints-check", "cluster-ips-check"):
        out = [o for o in w.chain(chain) if o[0] in ("DROP", "REJECT")]
        if out:
            return {"verdict": out[0][0], **none}
    return {"verdict": "NO_MATCH", **none}


FLOWS = load("packet_flows.json") if SHARED.is_dir() else {}
SCENARIOS = FLOWS.get("scenarios", []) + FLOWS.get("derived_scenarios", [])


@pytest.mark.skipif(not SCENARIOS, reason="conformance vectors not found")
@pytest.mark.parametrize("scn", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_conformance_flows_through_the_nftables_table(scn: dict) -> None:
    state, config = scenario_state(scn, FLOWS.get("backend_defaults") or {})
    dp = NftablesDataplane(config, nft=FakeNft())
    grouped: dict = {}
    for s in state.service_ports:
        grouped.setdefault((s.service.namespace, s.service.name), []).append(s)
    dp.sync({k: tuple(v) for k, v in grouped.items()}, full=True)
    bad = []
    for flow in scn["flows"]:
        src, dst = ipaddress.ip_address(flow["source_ip"]), ipaddress.ip_address(flow["dest_ip"])
        got = trace(dp.written, src, dst, flow["dest_port"], flow.get("protocol") or "TCP")
        if got != expected_result(flow):
            bad.append((flow["name"], got, expected_result(flow)))
    assert not bad, bad


# --- 4. incremental assembly: partial syncs equal a rebuild, and the scripts say so ------

def _apply(kernel, script: str) -> None:
    """A model of what `nft -f` does with the scripts transaction() writes."""
    t = "inet pyagent "
    for line in script.splitlines():
        if line == "add table inet pyagent":
            continue
        verb, _, rest = line.partition(" " + t)
        word, _, arg = rest.partition(" ")
        if verb in ("add map", "add set"):
            kernel.sets[word] = arg.strip("{} ")
            kernel.elements.setdefault(word, {})
        elif verb in ("delete map", "delete set"):
            del kernel.sets[word]
            kernel.elements.pop(word, None)
        elif verb == "add chain":  # base chains carry their hook: "{ type ... }"
            kernel.chains.setdefault(word, [])
        elif verb == "flush chain":
            kernel.chains[word] = []
        elif verb == "delete chain":
            assert kernel.chains.pop(word) == [], f"{word} deleted unflushed"
        elif verb == "add rule":
            kernel.chains[word].append(arg)
        elif verb in ("flush map", "flush set"):
            kernel.elements[word] = {}
        elif verb in ("add element", "delete element"):
            name, _, body = rest.partition(" ")
            for item in body.strip("{} ").split(", "):
                key, _, value = item.partition(" : ")
                if verb == "add element":
                    kernel.elements[name][key] = value
                else:
                    del kernel.elements[name][key]
        else:
            raise AssertionError(f"unexpected line {line!r}")


def _rebuilt(dp: NftablesDataplane) -> Desired:
    """The table as the whole-ruleset assembly made it: chains and sets of
    every kept fragment, the first claim of an element in Service order."""
    from pyagent.dataplanes.nftables.desired import skeleton

    d = skeleton(dp.config)
    for _svc, frags in dp.frags.items():
        for frag in frags:
            d.chains.update({c: tuple(r) for c, r in frag.chains.items()})
            d.sets.update(frag.sets)
            for m, key, verdict in frag.elements:
                d.elements[m].setdefault(key, verdict)
            if frag.cluster_ip:
                d.elements[f"cluster-ips{6 if ':' in frag.cluster_ip else 4}"][frag.cluster_ip] = ""
    return d


def _variant(name: str, v: int) -> tuple[ServicePortState, ...]:
    """Service `name` in one of a few shapes; several share external IPs, node
    ports and ClusterIPs with other Services so that claims collide."""
    if v == 0:
        return ()
    eps = (EP1, EP2, Endpoint("10.0.0.3", 8080, node_name="n1", is_local=True))[: 1 + v % 3]
    shared_ip = v % 4 == 1
    s = sps(name=name, eps=eps, cluster_ip="172.30.0.99" if shared_ip else
            f"172.30.0.{10 + ord(name[-1]) % 50}", node_port=30000 + v % 2,
            external_ips=("192.0.2.7",) if v % 2 else (),
            affinity_timeout=60 if v % 5 == 3 else None,
            service_type="NodePort")
    if v % 6 == 5:
        dns = ServicePort("ns", name, "dns", "UDP", 53, 4, "172.30.0.98")
        return (s, ServicePortState(dns, (), None, (), False))
    return (s,)


def test_partial_syncs_equal_a_rebuild_and_their_scripts_reach_it() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    names = ["a", "b", "c", "d"]
    ops = st.lists(st.tuples(st.sampled_from(names), st.integers(0, 11), st.booleans()),
                   min_size=1, max_size=25)

    @settings(max_examples=150, deadline=None)
    @given(ops)
    def run(steps) -> None:
        nft = FakeNft()
        dp = NftablesDataplane(CFG, nft=nft)
        dp.setup()
        dp.sync({}, full=True)
        kernel = Desired()
        for script in nft.scripts:
            _apply(kernel, script)
        current: dict = {}
        for name, v, full in steps:
            current[("ns", name)] = _variant(name, v)
            before = len(nft.scripts)
            if full:
                dp.sync({k: p for k, p in current.items() if p}, full=True)
            else:
                dp.sync({("ns", name): current[("ns", name)]}, full=False)
            for script in nft.scripts[before:]:
                _apply(kernel, script)
            want = _rebuilt(dp)
            assert dp.written == want
            assert {c: tuple(r) for c, r in kernel.chains.items()} == want.chains
            assert kernel.sets == want.sets
            # (affinity sets are filled by the packets, never by us)
            assert {m: e for m, e in kernel.elements.items() if not m.startswith("aff-")} \
                == want.elements

    run()
