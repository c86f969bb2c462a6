"""IPVS mode: virtual servers plus the helper iptables rules (pure).

IPVS does the balancing and the DNAT; iptables (chains PYAIPVS-*, the same
classification code as the iptables mode) does what IPVS cannot:
masquerade marks (ClusterIP from non-pods, eTP=Cluster external traffic,
hairpin), REJECT without endpoints, DROP by policy and LB source ranges, and
the choice of endpoint set that eTP=Local makes per source.

- ClusterIP and eTP=Cluster external frontends are address virtual servers
  (ClusterIP: the iTP set; external: the cluster set).
- eTP=Local external frontends are fwmark virtual servers: the EXT chain
  marks the first packet with the fwmark of the set the source gets (pods
  and the node: cluster set, others: local set). The masquerade bit (0x4000)
  is part of the mark IPVS matches exactly, so each set is registered under
  its fwmark with and without that bit.
- VIPs must be local addresses for IPVS to see the packets (INPUT): they are
  held by the VIP holder (kernel.py).
- The filter chain RETURNs for served frontends first: IPVS rewrites after
  filter INPUT, so there the destination is still the VIP.
"""

from __future__ import annotations

from collections.abc import Callable

from pyagent.core.config import NodeConfig
from pyagent.core.model import PROTOCOL_NUMBERS, Endpoint
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.iptables import policy as P
from pyagent.dataplanes.iptables.rules import Fragment, Renderer
from pyagent.dataplanes.ipvs.config import (
    FWMARK_MASK,
    MASQ_BIT,
    RealServer,
    VirtualServer,
    scheduler_for,
)


class IpvsFragment(Fragment):
    def __init__(self) -> None:
        super().__init__()
        self.virtual_servers: list[VirtualServer] = []
        self.vips: set[str] = set()  # addresses the VIP holder must make local


class IpvsRenderer(Renderer):
    prefix = "PYAIPVS-"

    def __init__(self, config: NodeConfig, family: int, scheduler: str = "rr",
                 fwmark: Callable[[tuple], int] | None = None) -> None:
        super().__init__(config, family)
        self.scheduler = scheduler
        self.fwmark = fwmark or _counter()
        self._marked: dict[tuple, list[VirtualServer]] = {}  # fwmark services by port key
        self._ext_local = False

    def render(self, sps: ServicePortState) -> IpvsFragment:
        frag = IpvsFragment()
        base = super().render(sps)
        frag.nat_chains, frag.services, frag.nodeports = (base.nat_chains, base.services,
                                                          base.nodeports)
        frag.cluster_ip = base.cluster_ip
        sp = sps.service
        sched = scheduler_for(sp.lb_algorithm, self.scheduler)
        proto = sp.protocol.lower()
        served: list[tuple[str, int]] = []
        if sp.cluster_ip and P.cluster_ip_verdict(sps) == P.DNAT:
            frag.virtual_servers.append(self._vs(sps, sp.cluster_ip, sp.port, 0, sched,
                                                 P.cluster_ip_set(sps)))
            served.append((sp.cluster_ip, sp.port))
        if sp.cluster_ip:
            frag.vips.add(sp.cluster_ip)
        cluster = P.cluster_set(sps)
        for vip in P.external_vips(sps, self.config):
            if vip.kind != P.NODE_PORT:
                frag.vips.add(vip.ip)
            if not sps.has_any_endpoints:
                continue
            served.append((vip.ip, vip.port))
            if not sp.external_policy_local and cluster:
                frag.virtual_servers.append(self._vs(sps, vip.ip, vip.port, 0, sched, cluster))
        frag.virtual_servers += self._marked.pop(sps.key, [])
        frag.filter = [f"-A {self.SERVICES} -d {ip}/{self.bits} -p {proto} -m {proto} "
                       f"--dport {port} -j RETURN" for ip, port in served] + base.filter
        return frag

    def _vs(self, sps: ServicePortState, ip: str, port: int, fwmark: int, sched: str,
            eps: tuple[Endpoint, ...]) -> VirtualServer:
        sp = sps.service
        return VirtualServer(
            family=self.family, protocol=0 if fwmark else PROTOCOL_NUMBERS[sp.protocol],
            ip="" if fwmark else ip, port=0 if fwmark else port, fwmark=fwmark,
            scheduler=sched, persistence=sp.affinity_timeout or 0,
            reals=tuple(sorted(RealServer(e.ip, e.port) for e in eps)))

    def _ext_rules(self, sps: ServicePortState, ext: str, proto: str,
                   frag: Fragment) -> list[str]:
        self._ext_local = sps.service.external_policy_local
        try:
            return super()._ext_rules(sps, ext, proto, frag)
        finally:
            self._ext_local = False

    def balance(self, sps: ServicePortState, which: str, eps: tuple[Endpoint, ...],
                frag: Fragment) -> str:
        """A chain with the hairpin masquerade rules; for eTP=Local external
        traffic it also sets the fwmark of the set (`-g`: the EXT chain must
        not go on to the next branch)."""
        marked = self._ext_local
        kind = ("FWC" if which == "cluster" else "FWL") if marked else \
            ("SVC" if which == "cluster" else "SVL")
        name = self.chain(kind, *sps.key)
        if name not in frag.nat_chains:
            rules = [f"-A {name} -s {e.ip}/{self.bits} -j {self.MARK_MASQ}"
                     for e in sorted(eps, key=lambda e: e.addr)]
            if marked:
                mark = self.fwmark((*sps.key, which))
                rules.append(f"-A {name} -j MARK --set-xmark {mark:#x}/{FWMARK_MASK:#x}")
                sched = scheduler_for(sps.service.lb_algorithm, self.scheduler)
                self._marked.setdefault(sps.key, []).extend(
                    self._vs(sps, "", 0, m, sched, eps) for m in (mark, mark | MASQ_BIT))
            frag.nat_chains[name] = rules
        return f"-g {name}" if marked else f"-j {name}"


def _counter() -> Callable[[tuple], int]:
    """A fwmark allocator: stable per key while the process lives."""
    marks: dict[tuple, int] = {}

    def alloc(key: tuple) -> int:
        if key not in marks:
            marks[key] = (len(marks) + 1) << 16
        return marks[key]
    return alloc
