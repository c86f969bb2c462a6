"""The IPVS mode's generated configuration (pure: this kernel has no IPVS).

Virtual servers per frontend, fwmark services for eTP=Local, schedulers from
the annotation, persistence for ClientIP affinity, the helper iptables rules,
and make-before-break ordering of a sync against recording fakes.
"""

from __future__ import annotations

import pytest

from pyagent.dataplanes.ipvs.config import RealServer, scheduler_for
from pyagent.dataplanes.ipvs.dataplane import IpvsDataplane
from pyagent.dataplanes.ipvs.rules import IpvsRenderer

from .test_modes_iptables import CFG, EP1, EP2, FakeExec, parse_restore, sps, target


@pytest.mark.parametrize(("annotation", "scheduler"), [
    (None, "rr"), ("round-robin", "rr"), ("least-conn", "lc"), ("maglev", "mh"),
    ("random", "rr"), ("source-hash", "sh"), ("destination-hash", "dh"),
    ("shortest-expected-delay", "sed"), ("never-queue", "nq"), ("SED", "sed"), ("nq", "nq"),
    ("mh", "mh"), ("bogus", "rr"),
])
def test_scheduler_mapping(annotation: str | None, scheduler: str) -> None:
    assert scheduler_for(annotation, "rr") == scheduler


def test_cluster_ip_is_an_address_virtual_server() -> None:
    frag = IpvsRenderer(CFG, 4, scheduler="lc").render(sps(affinity_timeout=300))
    (vs,) = frag.virtual_servers
    assert (vs.ip, vs.port, vs.protocol, vs.fwmark) == ("172.30.0.10", 80, 6, 0)
    assert vs.scheduler == "lc" and vs.persistence == 300
    assert vs.reals == (RealServer("10.0.0.1", 8080), RealServer("10.0.0.2", 8080))
    assert vs.ipvsadm()[0] == "-A -t 172.30.0.10:80 -s lc -p 300"
    assert vs.ipvsadm()[1] == "-a -t 172.30.0.10:80 -r 10.0.0.1:8080 -m -w 1"
    assert frag.vips == {"172.30.0.10"}
    # IPVS rewrites after filter INPUT: served frontends RETURN before any REJECT
    assert frag.filter[0][-2:] == "RETURN"[-2:] and "172.30.0.10/32" in frag.filter[0]


def test_annotation_overrides_the_global_scheduler() -> None:
    frag = IpvsRenderer(CFG, 4, scheduler="rr").render(sps(lb_algorithm="maglev"))
    assert frag.virtual_servers[0].scheduler == "mh"


def test_cluster_policy_node_port_gets_one_server_per_node_ip() -> None:
    frag = IpvsRenderer(CFG, 4).render(sps(node_port=30001, external_ips=("192.0.2.9",)))
    keys = sorted((v.ip, v.port) for v in frag.virtual_servers)
    assert keys == [("172.30.0.10", 80), ("192.0.2.9", 80), ("192.168.0.2", 30001)]
    assert frag.vips == {"172.30.0.10", "192.0.2.9"}  # node IPs are local already


def test_local_policy_uses_fwmark_services_with_and_without_the_masq_bit() -> None:
    marks = {}
    r = IpvsRenderer(CFG, 4, fwmark=lambda k: marks.setdefault(k, (len(marks) + 1) << 16))
    frag = r.render(sps(local=(EP1,), node_port=30001, external_policy_local=True))
    fw = sorted((v.fwmark, [x.ip for x in v.reals]) for v in frag.virtual_servers if v.fwmark)
    assert fw == [(0x10000, ["10.0.0.1", "10.0.0.2"]), (0x14000, ["10.0.0.1", "10.0.0.2"]),
                  (0x20000, ["10.0.0.1"]), (0x24000, ["10.0.0.1"])]
    assert not [v for v in frag.virtual_servers if v.port == 30001]  # no address server
    ext = next(c for c in frag.nat_chains if c.startswith("PYAIPVS-EXT-"))
    rules = [r.split() for r in frag.nat_chains[ext]]
    assert "-g" in rules[-1] and target(rules[-1]).startswith("PYAIPVS-FWL-")
    fwl = frag.nat_chains[target(rules[-1])]
    assert fwl[-1].endswith("-j MARK --set-xmark 0x20000/0xffff0000")


class FakeIpvs:
    def __init__(self, log: list) -> None:
        self.log, self.vs = log, {}

    def add(self, vs) -> None:
        if vs.key in self.vs:  # as the kernel answers: EEXIST
            raise FileExistsError(vs.key)
        self.log.append(("add", vs.key))
        self.vs[vs.key] = vs

    def update(self, old, new) -> None:
        self.log.append(("update", new.key))
        self.vs[new.key] = new

    def delete(self, vs) -> None:
        self.log.append(("delete", vs.key))
        self.vs.pop(vs.key, None)

    def dump_keys(self) -> list:
        return list(self.vs)

    def dump(self, keep) -> list:
        return [v for k, v in self.vs.items() if keep(k)]

    def close(self) -> None:
        pass


class FakeHolder:
    def __init__(self, log: list) -> None:
        self.log, self.ips = log, set()

    def current(self) -> set:
        return set(self.ips)

    def add(self, ip: str) -> None:
        self.log.append(("vip+", ip))
        self.ips.add(ip)

    def remove(self, ip: str) -> None:
        self.log.append(("vip-", ip))
        self.ips.discard(ip)

    def close(self) -> None:
        pass


class LoggingExec(FakeExec):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def run(self, argv, stdin=None, check=True) -> str:
        if "restore" in argv[0]:
            self.log.append(("rules",))
        return super().run(argv, stdin, check)


def test_sync_is_make_before_break() -> None:
    log: list = []
    ipvs, holder = FakeIpvs(log), FakeHolder(log)
    dp = IpvsDataplane(CFG, ex=LoggingExec(log), families=(4,), kernel=ipvs, holder=holder)
    dp.sync({("ns", "a"): (sps(),)}, full=True)
    assert [e[0] for e in log] == ["vip+", "add", "rules"]
    log.clear()
    dp.sync({("ns", "a"): (sps(eps=(EP2,)),)}, full=False)  # one endpoint gone
    assert [e[0] for e in log] == ["update", "rules"]
    log.clear()
    dp.sync({("ns", "a"): (), ("ns", "b"): (sps(name="b", cluster_ip="172.30.0.11"),)},
            full=False)
    kinds = [e[0] for e in log]
    assert kinds == ["vip+", "add", "rules", "delete", "vip-"]
    assert holder.ips == {"172.30.0.11"}


def test_full_sync_removes_virtual_servers_left_on_our_vips() -> None:
    log: list = []
    ipvs, holder = FakeIpvs(log), FakeHolder(log)
    holder.ips = {"172.30.0.99"}
    from pyagent.dataplanes.ipvs.config import VirtualServer

    ipvs.vs = {k: VirtualServer(*k, "rr", 0, ()) for k in ((4, 6, "172.30.0.99", 80, 0),
                                                          (4, 6, "198.51.100.1", 80, 0))}
    dp = IpvsDataplane(CFG, ex=FakeExec(), families=(4,), kernel=ipvs, holder=holder)
    dp.sync({("ns", "a"): (sps(),)}, full=True)
    assert (4, 6, "172.30.0.99", 80, 0) not in ipvs.vs  # ours (on our VIP): removed
    assert (4, 6, "198.51.100.1", 80, 0) in ipvs.vs  # not ours: kept
    assert holder.ips == {"172.30.0.10"}


def test_setup_adopts_existing_servers_and_updates_them_in_place() -> None:
    from pyagent.dataplanes.ipvs.config import VirtualServer

    log: list = []
    ipvs, holder = FakeIpvs(log), FakeHolder(log)
    holder.ips = {"172.30.0.10"}
    key = (4, 6, "172.30.0.10", 80, 0)
    ipvs.vs = {key: VirtualServer(*key, "", -1, (RealServer("10.0.0.1", 8080),))}
    dp = IpvsDataplane(CFG, ex=FakeExec(), families=(4,), kernel=ipvs, holder=holder)
    dp.adopt()  # setup() minus sysctls and hooks: never touch this namespace
    log.clear()
    dp.sync({("ns", "a"): (sps(),)}, full=True)
    assert [e[0] for e in log] == ["update"]  # no delete: connections survive a restart


def test_helper_rules_parse_and_never_dnat() -> None:
    ex = FakeExec()
    dp = IpvsDataplane(CFG, ex=ex, families=(4,), kernel=FakeIpvs([]), holder=FakeHolder([]))
    dp.sync({("ns", "a"): (sps(node_port=30001),)}, full=True)
    t = parse_restore(ex.restores[-1])
    assert not any("DNAT" in r for rules in t["nat"].values() for r in rules)
    assert any(c.startswith("PYAIPVS-SVC-") for c in t["nat"])


def test_full_sync_after_a_half_written_sync_updates_instead_of_adding() -> None:
    """A sync that failed part-way left a virtual server the dataplane does not
    know about; the retry (a full sync) reads the kernel first, so it updates
    it instead of failing on EEXIST forever."""
    log: list = []
    ipvs, holder = FakeIpvs(log), FakeHolder(log)
    holder.ips = {"172.30.0.10"}
    dp = IpvsDataplane(CFG, ex=FakeExec(), families=(4,), kernel=ipvs, holder=holder)
    dp.sync({("ns", "a"): (sps(),)}, full=True)
    dp.vs = {}  # as if that sync had raised after writing to the kernel
    dp.sync({("ns", "a"): (sps(),)}, full=True)
    assert ("add", (4, 6, "172.30.0.10", 80, 0)) in log  # the first time only
    assert len([e for e in log if e[0] == "add"]) == 1
