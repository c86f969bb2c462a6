"""Hostile object names through every rule-rendering mode, into a real
kernel (issue 12, item 6). On main, a Service name holding a quote and
newlines wrote a chain of its author's choosing that survived
`pyagent cleanup`, and one such name made every iptables-restore fail.

Each mode gets a fresh lab node namespace. Its dataplane is handed Service
states built directly from tests/hostile.py (past the parser's name
validation: the renderers must be safe on their own), loads them with
iptables-restore / nft -f for real, and must:
- report every Service programmed (nothing refused for its name);
- keep a plainly named Service working, before and after an incremental
  change of its endpoints (real connections to the lab's pods);
- leave nothing outside its own chains / table (every chain is builtin or
  has the mode's prefix; builtin chains hold only the agent's hooks;
  nft tables are ours or iptables-nft's own);
- and after `pyagent cleanup --mode M`, leave nothing at all.
IPVS has no kernel here, so its helper chains are loaded for real and the
virtual servers recorded (as in test_modes.py). The ebpf mode renders no
text; test_agent_* cover it, and test_manifests_refuse_hostile_names below
runs the agent itself in every mode on this kernel.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.root

TESTS = Path(__file__).resolve().parent
PREFIX = {"iptables": "PYAGENT-", "ipvs": "PYAIPVS-", "userspace": "PYAUSR-"}
BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
IPTABLES_NFT_TABLES = {"nat", "filter", "mangle", "raw", "security"}
# No ACCEPT, except the fixed rules of <prefix>FORWARD (kube-proxy's KUBE-FORWARD)
TARGETS = {"DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE", "REDIRECT"}

SCRIPT = """
import json, socket, sys, time
sys.path.insert(0, sys.argv[2])
from hostile import HOSTILE, hostile_state
from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.state import ServicePortState

mode = sys.argv[1]
cfg = NodeConfig(node_name="node-1", node_ips=("10.244.0.1",), cluster_cidrs=("10.244.0.0/16",))
POD0 = Endpoint("10.244.0.10", 8080, node_name="node-1", is_local=True)
POD1 = Endpoint("10.244.0.11", 8080, node_name="node-1", is_local=True)

def plain(*eps):
    sp = ServicePort("ns", "plain", "http", "TCP", 80, 4, "10.96.0.1")
    return (ServicePortState(sp, eps, None, eps, True),)

class FakeIpvs:  # no IPVS in this kernel: record what would be written
    def __init__(self): self.vs = {}
    def add(self, vs): self.vs[vs.key] = vs
    def update(self, old, new): self.vs[new.key] = new
    def delete(self, vs): self.vs.pop(vs.key, None)
    def dump_keys(self): return list(self.vs)
    def dump(self, keep): return [v for k, v in self.vs.items() if keep(k)]
    def close(self): pass

if mode == "iptables":
    from pyagent.dataplanes.iptables.dataplane import IptablesDataplane as D
    dp = D(cfg)
elif mode == "nftables":
    from pyagent.dataplanes.nftables.dataplane import NftablesDataplane as D
    dp = D(cfg)
elif mode == "userspace":
    from pyagent.dataplanes.userspace.dataplane import UserspaceDataplane as D
    dp = D(cfg)
else:
    from pyagent.dataplanes.ipvs.dataplane import IpvsDataplane as D
    dp = D(cfg, kernel=FakeIpvs())

def pods(n=20):
    seen = {}
    for _ in range(n):
        try:
            with socket.create_connection(("10.96.0.1", 80), timeout=2) as s:
                pod = json.loads(s.makefile().readline())["pod"]
        except OSError as exc:
            pod = type(exc).__name__
        seen[pod] = seen.get(pod, 0) + 1
    return seen

states = {("ns", "plain"): plain(POD0, POD1)}
for i, name in enumerate(HOSTILE, 1):
    states[(f"h{i}", name)] = (hostile_state(i, name),)
dp.setup()
out = {"status": {repr(k): v for k, v in dp.sync(states, full=True).items()}}
traffic = mode != "ipvs"
out["before"] = pods() if traffic else {}
# The other Services keep syncing: an incremental change, then a full resync.
dp.sync({("ns", "plain"): plain(POD1)}, full=False)
out["after_change"] = pods() if traffic else {}
states[("ns", "plain")] = plain(POD0)
out["full_status"] = {repr(k): v for k, v in dp.sync(states, full=True).items()}
out["after_full"] = pods() if traffic else {}
print(json.dumps(out))
dp.close()
"""


def iptables_view(lab, save: str = "iptables-save") -> tuple[set, list[str]]:
    """(non-builtin chains, rules) of every table of one iptables backend."""
    res = lab.node_exec(save, check=False)
    chains, rules = set(), []
    table = ""
    for line in res.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name not in BUILTIN:
                chains.add((table, name))
        elif line.startswith("-A "):
            rules.append(f"{table} {line}")
    return chains, rules


def nft_tables(lab) -> list[tuple[str, str]]:
    res = lab.node_exec("nft", "-j", "list", "tables")
    return [(o["table"]["family"], o["table"]["name"])
            for o in json.loads(res.stdout)["nftables"] if "table" in o]


def assert_only_ours(lab, mode: str) -> None:
    tables = nft_tables(lab)
    for family, name in tables:
        ours = (family, name) == ("inet", "pyagent")
        assert ours or (family in ("ip", "ip6") and name in IPTABLES_NFT_TABLES), tables
    if mode == "nftables":
        assert ("inet", "pyagent") in tables
        chains, rules = iptables_view(lab)
        assert not chains and not rules, (chains, rules)
        ruleset = lab.node_exec("nft", "list", "table", "inet", "pyagent").stdout
        assert "evil" not in ruleset and "6.6.6.6" not in ruleset
        return
    prefix = PREFIX[mode]
    chains, rules = iptables_view(lab)
    assert chains and all(c.startswith(prefix) for _, c in chains), sorted(chains)
    assert not any("EVIL" in c for _, c in chains)
    for rule in rules:
        table, _, chain, *args = shlex.split(rule)
        if "--comment" in args:  # a name may show there, as one quoted argument
            i = args.index("--comment")
            assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._:/~-]*", args[i + 1]), rule
            del args[i:i + 2]
            if chain in BUILTIN:  # only the agent's hooks into its own chains
                assert args[-1].startswith(prefix), rule
        else:
            assert chain.startswith(prefix), rule
        assert chain in BUILTIN or chain.startswith(prefix), rule
        for flag in ("-j", "-g"):
            if flag in args:
                target = args[args.index(flag) + 1]
                assert (target.startswith(prefix) or target in TARGETS
                        or (target == "ACCEPT" and chain == f"{prefix}FORWARD")), rule
        if "--to-destination" in args:
            assert re.fullmatch(r"10\.244\.0\.1[01]:8080",
                                args[args.index("--to-destination") + 1]), rule
        assert "6.6.6.6" not in " ".join(args), rule
    assert ("inet", "pyagent") not in nft_tables(lab)


def assert_nothing_left(lab) -> None:
    chains, rules = iptables_view(lab)
    assert not chains and not rules, (chains, rules)
    assert ("inet", "pyagent") not in nft_tables(lab)
    legacy = iptables_view(lab, "iptables-legacy-save")
    assert legacy == (set(), []), legacy


@pytest.mark.parametrize("mode", ["iptables", "nftables", "userspace", "ipvs"])
def test_hostile_names_load_into_the_kernel_and_clean_up(mode: str) -> None:
    from pyagent.lab import Lab

    with Lab(pods=2) as lab:
        lab.enable_routing()
        assert_nothing_left(lab)
        res = lab.node_exec(sys.executable, "-c", SCRIPT, mode, str(TESTS), check=False)
        try:
            assert res.returncode == 0, res.stderr[-3000:]
            out = json.loads(res.stdout)
            assert set(out["status"].values()) == {None}, out["status"]
            assert set(out["full_status"].values()) == {None}, out["full_status"]
            if mode != "ipvs":
                assert set(out["before"]) == {"pod0", "pod1"}, out
                assert out["after_change"] == {"pod1": 20}, out
                assert out["after_full"] == {"pod0": 20}, out
            assert_only_ours(lab, mode)
        finally:
            clean = lab.agent(["cleanup", "--mode", mode], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
            print(clean.communicate(timeout=60)[0])
        assert_nothing_left(lab)


# --- the agent itself, from manifests: names refused at parse time ------------------------

def manifests() -> list[dict]:
    from hostile import HOSTILE

    objs: list[dict] = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}]
    for i, name in enumerate(HOSTILE[:20]):
        objs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": "ns"},
                     "spec": {"clusterIP": f"10.96.1.{i + 1}",
                              "ports": [{"name": "http", "port": 80}]}})
    objs.append({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "plain", "namespace": "ns"},
                 "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}})
    objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "plain-1", "namespace": "ns",
                              "labels": {"kubernetes.io/service-name": "plain"}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                 "endpoints": [{"addresses": ["10.244.0.10"], "nodeName": "node-1"}]})
    return objs


@pytest.mark.parametrize("mode", ["ebpf", "iptables", "nftables", "userspace"])
def test_manifests_refuse_hostile_names_and_serve_the_rest(mode: str) -> None:
    from test_modes import wait_for

    from pyagent.lab import Lab

    with Lab(pods=1) as lab:
        lab.enable_routing()
        mdir = lab.tmp / "manifests"
        mdir.mkdir()
        (mdir / "all.yaml").write_text(yaml.safe_dump_all(manifests()))
        common = ["--cgroup", str(lab.cgroup), "--bpffs", str(lab.bpffs / "pyagent")]
        log = lab.tmp / "agent.log"
        with open(log, "w") as f:
            agent = lab.agent(["run", "--manifests", str(mdir), "--node-name", "node-1",
                               "--node-ip", "10.244.0.1", "--mode", mode, *common,
                               "--healthz-bind-address", "127.0.0.1:0",
                               "--metrics-bind-address", "127.0.0.1:0"],
                              stdout=f, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: lab.client("10.96.0.1", 80, count=1, timeout=0.5).total == 1,
                         f"{mode}: the plain Service")
                if mode != "ebpf":
                    assert_only_ours(lab, mode)
            finally:
                agent.terminate()
                agent.wait(timeout=15)
        text = log.read_text()
        assert "all.yaml: 'Service ns/x\"\\n-A INPUT -j ACCEPT\\n#': metadata.name:" in text, \
            text[-3000:]
        assert "\n-A INPUT" not in text  # logged quoted, never raw
        clean = lab.agent(["cleanup", "--mode", mode, *common], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
        clean.communicate(timeout=60)
        assert_nothing_left(lab)
