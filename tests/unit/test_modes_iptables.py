"""The iptables mode's generated rules (no root, no kernel).

1. Shape: chains and jumps for typical Services, parsed from the
   iptables-restore text the dataplane hands to its (fake) executor.
2. Incremental syncs write only the chains that changed and delete the
   chains that went away.
3. Every conformance flow (../shared/conformance) walked through the
   generated rules by a tiny rule walker must give trace.py's verdict,
   endpoint set and masquerade bit.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

import pytest

from pyagent.core.config import NodeConfig, config_from_dict
from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.sink import KINDS
from pyagent.core.state import DesiredState, ServicePortState
from pyagent.core.store import ServiceStore
from pyagent.dataplanes.iptables.dataplane import IptablesDataplane
from pyagent.dataplanes.iptables.rules import Renderer

from .conformance_adapter import SHARED, expected_result, load, scenario_config, scenario_objects

CFG = NodeConfig(node_name="n1", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
EP1 = Endpoint("10.0.0.1", 8080, node_name="n1", is_local=True)
EP2 = Endpoint("10.0.0.2", 8080, node_name="n2")


def sps(eps=(EP1, EP2), local=None, has_any=True, **kw) -> ServicePortState:
    sp = ServicePort("ns", kw.pop("name", "a"), "http", kw.pop("protocol", "TCP"), 80, 4,
                     kw.pop("cluster_ip", "172.30.0.10"), **kw)
    return ServicePortState(sp, tuple(eps), local, tuple(eps), has_any)


class FakeExec:
    """Records restores; `-C` checks fail, so hooks get inserted once per setup."""

    def __init__(self) -> None:
        self.restores: list[str] = []
        self.commands: list[list[str]] = []

    def run(self, argv, stdin=None, check=True) -> str:
        self.commands.append(list(argv))
        if "restore" in argv[0]:
            self.restores.append(stdin or "")
        return ""

    def ok(self, argv) -> bool:
        self.commands.append(list(argv))
        return False


def parse_restore(text: str) -> dict[str, dict[str, list[list[str]]]]:
    """{table: {chain: [rule args]}} of the chains declared in a restore text."""
    tables: dict[str, dict[str, list[list[str]]]] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            assert table is not None
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            assert table is not None
            args = shlex.split(line)
            table[args[1]].append(args[2:])
    return tables


def rules_for(*states: ServicePortState, config: NodeConfig = CFG):
    ex = FakeExec()
    dp = IptablesDataplane(config, ex=ex, families=(4,))
    dp.sync({(s.service.namespace, s.service.name): (s,) for s in states}, full=True)
    return parse_restore(ex.restores[-1]), dp, ex


def target(rule: list[str]) -> str:
    return rule[rule.index("-j") + 1] if "-j" in rule else rule[rule.index("-g") + 1]


# --- 1. shape -------------------------------------------------------------------------

def test_cluster_ip_balances_over_endpoint_chains_with_statistic() -> None:
    t, _, _ = rules_for(sps())
    nat = t["nat"]
    svc_rules = [r for r in nat["PYAGENT-SERVICES"] if "172.30.0.10/32" in r]
    assert [target(r) for r in svc_rules][0] == "PYAGENT-MASQ-NONPOD"
    svc = target(svc_rules[-1])
    assert svc.startswith("PYAGENT-SVC-") and len(svc) <= 28
    first, last = nat[svc]
    assert first[first.index("--probability") + 1] == "0.5000000000"
    assert "statistic" not in last
    seps = [target(r) for r in nat[svc]]
    dnat = sorted(r[r.index("--to-destination") + 1] for s in seps for r in nat[s] if "DNAT" in r)
    assert dnat == ["10.0.0.1:8080", "10.0.0.2:8080"]
    # hairpin: an endpoint reaching its own service is masqueraded
    assert ["-s", "10.0.0.1/32", "-j", "PYAGENT-MARK-MASQ"] in nat[seps[0]]


def test_client_ip_affinity_uses_the_recent_match() -> None:
    t, _, _ = rules_for(sps(affinity_timeout=300))
    nat = t["nat"]
    svc = next(c for c in nat if c.startswith("PYAGENT-SVC-"))
    checks = [r for r in nat[svc] if "--rcheck" in r]
    assert len(checks) == 2 and all(r[r.index("--seconds") + 1] == "300" for r in checks)
    sep = target(checks[0])
    assert any("--set" in r and r[r.index("--name") + 1] == sep for r in nat[sep])


def test_no_endpoints_rejects_in_the_filter_table_and_never_dnats() -> None:
    t, _, _ = rules_for(sps(eps=(), has_any=False, node_port=30001))
    assert not any("172.30.0.10/32" in r for r in t["nat"]["PYAGENT-SERVICES"])
    rejects = [r for r in t["filter"]["PYAGENT-SERVICES"] if target(r) == "REJECT"]
    assert any("172.30.0.10/32" in r and "80" in r for r in rejects)
    assert any("192.168.0.2/32" in r and "30001" in r for r in rejects)


def test_local_policy_without_local_endpoints_marks_external_traffic_for_drop() -> None:
    t, _, _ = rules_for(sps(local=(), node_port=30001, external_policy_local=True))
    nat = t["nat"]
    ext = target(nat["PYAGENT-NODEPORTS"][0])
    assert ext.startswith("PYAGENT-EXT-")
    assert target(nat[ext][-1]) == "PYAGENT-MARK-DROP"
    assert nat[ext][0][:5] == ["-p", "tcp", "-s", "10.0.0.0/8", "-j"]  # pods short-circuit
    assert t["filter"]["PYAGENT-FIREWALL"] == [["-m", "mark", "--mark", "0x8000/0x8000",
                                                "-j", "DROP"]]


def test_hooks_are_inserted_once_firewall_first() -> None:
    ex = FakeExec()
    IptablesDataplane(CFG, ex=ex, families=(4,)).setup()
    inserts = [c for c in ex.commands if "-I" in c]
    assert inserts[-1][-1] == "PYAGENT-SERVICES" and inserts[-2][-1] == "PYAGENT-SERVICES"
    # Each is inserted at position 1, so a built-in chain ends up with them in
    # reverse order of insertion: FIREWALL, then SERVICES, then (FORWARD only)
    # the KUBE-FORWARD equivalent, whose ACCEPTs must not skip the drops.
    final = [c[-1] for c in reversed(inserts) if "filter" in c and "FORWARD" in c]
    assert final == ["PYAGENT-FIREWALL", "PYAGENT-SERVICES", "PYAGENT-FORWARD"]
    inputs = [c[-1] for c in reversed(inserts) if "filter" in c and "INPUT" in c]
    assert inputs == ["PYAGENT-FIREWALL", "PYAGENT-SERVICES"]


def test_forward_chain_is_kube_proxys_kube_forward() -> None:
    t, _, _ = rules_for(sps())
    assert t["filter"]["PYAGENT-FORWARD"] == [
        ["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
        ["-m", "mark", "--mark", "0x4000/0x4000", "-j", "ACCEPT"],
        ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ["-d", "10.0.0.0/8", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"]]


# --- 2. incremental syncs --------------------------------------------------------------

def test_partial_sync_rewrites_only_changed_chains_and_deletes_gone_ones() -> None:
    a, b = sps(name="a"), sps(name="b", cluster_ip="172.30.0.11")
    _, dp, ex = rules_for(a, b)
    a2 = sps(name="a", eps=(EP1,))
    dp.sync({("ns", "a"): (a2,)}, full=False)
    text = ex.restores[-1]
    declared = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":")]
    deleted = [line.split()[1] for line in text.splitlines() if line.startswith("-X")]
    b_names = set(Renderer(CFG, 4).render(b).nat_chains)
    assert not b_names & set(declared)  # b untouched
    assert len(deleted) == 1 and deleted[0].startswith("PYAGENT-SEP-")  # EP2's chain of a
    before = len(ex.restores)
    dp.sync({("ns", "a"): (a2,)}, full=False)
    assert len(ex.restores) == before  # nothing changed: no restore at all
    dp.sync({("ns", "a"): ()}, full=False)
    gone = [line.split()[1] for line in ex.restores[-1].splitlines() if line.startswith("-X")]
    assert {c for c in gone if c.startswith("PYAGENT-SVC-")}


def test_full_sync_removes_chains_left_by_an_earlier_agent() -> None:
    ex = FakeExec()
    dp = IptablesDataplane(CFG, ex=ex, families=(4,))
    dp.chains.leftover[4] = {("nat", "PYAGENT-SVC-OLDOLDOLDOLDOLD1")}
    dp.sync({}, full=True)
    assert "-X PYAGENT-SVC-OLDOLDOLDOLDOLD1" in ex.restores[-1]


# --- 3. conformance flows through a rule walker ---------------------------------------

@dataclass
class Packet:
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    proto: str
    mark: int = 0


def _matches(rule: list[str], p: Packet) -> bool | None:
    """True/False, or None for a statistic match (both branches possible)."""
    i, maybe = 0, False
    while i < len(rule):
        opt = rule[i]
        neg = opt == "!"
        if neg:
            i += 1
            opt = rule[i]
        if opt in ("-s", "-d"):
            net = ipaddress.ip_network(rule[i + 1], strict=False)
            addr = p.src if opt == "-s" else p.dst
            hit = addr.version == net.version and addr in net
            if hit == neg:
                return False
            i += 2
        elif opt == "-p":
            if rule[i + 1] != p.proto.lower():
                return False
            i += 2
        elif opt == "--dport":
            if int(rule[i + 1]) != p.dport:
                return False
            i += 2
        elif opt == "--mark":
            value, mask = (int(x, 16) for x in rule[i + 1].split("/"))
            if ((p.mark & mask) == value) == neg:
                return False
            i += 2
        elif opt == "--ctstate":
            i += 2
        elif opt == "--probability":
            maybe = True
            i += 2
        elif opt == "--rcheck":
            return False  # a new client has no affinity entry yet
        elif opt in ("-j", "-g"):
            break
        elif opt in ("-m", "--comment", "--mode", "--name", "--mask", "--seconds",
                     "--to-ports"):
            i += 2
        else:
            i += 1
    return None if maybe else True


def walk(chains: dict[str, list[list[str]]], chain: str, p: Packet,
         depth: int = 0) -> list[tuple[str, str | None, int]]:
    """Every outcome of `chain`: (verdict, endpoint, mark); verdict CONTINUE
    means the chain returned."""
    assert depth < 20
    outcomes = []
    for idx, rule in enumerate(chains.get(chain, [])):
        m = _matches(rule, p)
        if m is False:
            continue
        if m is None:  # statistic: the rule may not match either
            rest = chains[chain][idx + 1:]
            outcomes += walk({**chains, "__rest": rest}, "__rest", Packet(**vars(p)), depth + 1)
        j = target(rule)
        goto = "-g" in rule
        if j == "RETURN":
            return outcomes + [("CONTINUE", None, p.mark)]
        if j == "MARK":
            flag = "--or-mark" if "--or-mark" in rule else "--xor-mark"
            v = int(rule[rule.index(flag) + 1], 16)
            p.mark = p.mark | v if flag == "--or-mark" else p.mark ^ v
            continue
        if j in ("DNAT", "REJECT", "DROP", "REDIRECT"):
            ep = rule[rule.index("--to-destination") + 1] if j == "DNAT" else \
                rule[rule.index("--to-ports") + 1] if j == "REDIRECT" else None
            return outcomes + [(j, ep, p.mark)]
        sub = walk(chains, j, Packet(**vars(p)), depth + 1)
        outcomes += [o for o in sub if o[0] != "CONTINUE"]
        cont = [o for o in sub if o[0] == "CONTINUE"]
        if goto or not cont:
            return outcomes + ([("CONTINUE", None, cont[0][2])] if goto and cont else [])
        p.mark = cont[0][2]
    return outcomes + [("CONTINUE", None, p.mark)]


def verdict(tables, p: Packet) -> dict:
    nat = walk(tables["nat"], "PYAGENT-SERVICES", Packet(**vars(p)))
    dnat = [o for o in nat if o[0] == "DNAT"]
    if dnat:
        return {"verdict": "DNAT", "endpoints": sorted({o[1] for o in dnat}),
                "masquerade": any(o[2] & 0x4000 for o in dnat)}
    mark = next((o[2] for o in nat if o[0] == "CONTINUE"), 0)
    for chain in ("PYAGENT-FIREWALL", "PYAGENT-SERVICES"):
        out = walk(tables["filter"], chain, Packet(p.src, p.dst, p.dport, p.proto, mark))
        final = [o for o in out if o[0] in ("DROP", "REJECT")]
        if final:
            return {"verdict": final[0][0], "endpoints": [], "masquerade": False}
    return {"verdict": "NO_MATCH", "endpoints": [], "masquerade": False}


def scenario_state(scn: dict, defaults: dict) -> tuple[DesiredState, NodeConfig]:
    config = config_from_dict(scenario_config(scn, defaults))
    store = ServiceStore(config, log_invalid=False)
    objs = scenario_objects(scn)
    for kind in KINDS:
        store.replace(kind, [o for o in objs if o["kind"] == kind])
    return store.full_state(), config


def all_tables(state: DesiredState, config: NodeConfig) -> dict[int, dict]:
    ex = FakeExec()
    dp = IptablesDataplane(config, ex=ex)
    grouped: dict = {}
    for s in state.service_ports:
        grouped.setdefault((s.service.namespace, s.service.name), []).append(s)
    dp.sync({k: tuple(v) for k, v in grouped.items()}, full=True)
    # restores[0] is IPv4, [1] IPv6 (families in order)
    return {4: parse_restore(ex.restores[0]), 6: parse_restore(ex.restores[1])}


FLOWS = load("packet_flows.json") if SHARED.is_dir() else {}
SCENARIOS = FLOWS.get("scenarios", []) + FLOWS.get("derived_scenarios", [])


@pytest.mark.skipif(not SCENARIOS, reason="conformance vectors not found")
@pytest.mark.parametrize("scn", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_conformance_flows_through_the_iptables_rules(scn: dict) -> None:
    state, config = scenario_state(scn, FLOWS.get("backend_defaults") or {})
    tables = all_tables(state, config)
    bad = []
    for flow in scn["flows"]:
        src, dst = ipaddress.ip_address(flow["source_ip"]), ipaddress.ip_address(flow["dest_ip"])
        got = verdict(tables[dst.version], Packet(src, dst, flow["dest_port"],
                                                  flow.get("protocol") or "TCP"))
        want = expected_result(flow)
        if got != want:
            bad.append((flow["name"], got, want))
    assert not bad, bad


def test_periodic_full_sync_writes_only_differences_until_a_restore_fails() -> None:
    _, dp, ex = rules_for(sps())
    n = len(ex.restores)
    dp.sync({("ns", "a"): (sps(),)}, full=True)
    assert len(ex.restores) == n  # unchanged: nothing written

    def failing(argv, stdin=None, check=True) -> str:
        raise RuntimeError("iptables-restore: resource busy")
    ok_run, ex.run = ex.run, failing
    with pytest.raises(RuntimeError):
        dp.sync({("ns", "a"): (sps(eps=(EP1,)),)}, full=False)
    ex.run = ok_run
    dp.sync({("ns", "a"): (sps(eps=(EP1,)),)}, full=True)
    text = ex.restores[-1]
    assert ":PYAGENT-POSTROUTING - [0:0]" in text  # unchanged chains rewritten too
