"""iptables rules for one service port, in iptables-restore syntax (pure).

Chain layout (kube-proxy's, with the prefix PYAGENT- so a real kube-proxy in
the same namespace never collides with us):

  nat PREROUTING, OUTPUT -> PYAGENT-SERVICES   VIP:port dispatch, then
                                               node IPs -> PYAGENT-NODEPORTS
  PYAGENT-SVC-<h> / PYAGENT-SVL-<h>            balance over the cluster / local
                                               set (statistic random, recent
                                               for ClientIP affinity)
  PYAGENT-SEP-<h>                              one endpoint: hairpin masq, DNAT
  PYAGENT-EXT-<h>                              external traffic policy branches
  PYAGENT-FW-<h>                               LB source ranges
  PYAGENT-MARK-MASQ / PYAGENT-MARK-DROP        set mark bits 0x4000 / 0x8000
  PYAGENT-MASQ-NONPOD                          masquerade unless from a pod CIDR
  nat POSTROUTING -> PYAGENT-POSTROUTING       masquerade marked packets
  filter INPUT, FORWARD, OUTPUT -> PYAGENT-FIREWALL (drop mark 0x8000), then
  PYAGENT-SERVICES (new connections: REJECT without endpoints, DROP by
  policy, REJECT unserved ClusterIP ports, DROP unallocated service CIDR).

DROP decisions that depend on the source (eTP=Local, source ranges) are
taken in nat chains, which may not drop, so they set the drop mark and the
filter table drops. The filter chains run after DNAT, so only traffic that
was not DNATed still carries a VIP as destination there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, join_host_port
from pyagent.core.state import ServicePortState
from pyagent.dataplanes import text
from pyagent.dataplanes.iptables import policy as P

MASQ_MARK, DROP_MARK = "0x4000", "0x8000"


@dataclass
class Fragment:
    """What one service port contributes to the ruleset of its family."""
    nat_chains: dict[str, list[str]] = field(default_factory=dict)
    services: list[str] = field(default_factory=list)  # nat <prefix>SERVICES rules
    nodeports: list[str] = field(default_factory=list)  # nat <prefix>NODEPORTS rules
    filter: list[str] = field(default_factory=list)  # filter <prefix>SERVICES rules
    cluster_ip: str | None = None


class Renderer:
    """Turns ServicePortStates of one IP family into Fragments."""

    prefix = "PYAGENT-"
    masquerade = True  # the userspace mode proxies, so it never masquerades

    def __init__(self, config: NodeConfig, family: int) -> None:
        self.config, self.family = config, family
        self.bits = 128 if family == 6 else 32
        p = self.prefix
        self.SERVICES, self.NODEPORTS = p + "SERVICES", p + "NODEPORTS"
        self.POSTROUTING, self.FIREWALL = p + "POSTROUTING", p + "FIREWALL"
        self.MARK_MASQ, self.MARK_DROP = p + "MARK-MASQ", p + "MARK-DROP"
        self.NONPOD = p + "MASQ-NONPOD"
        self.FORWARD = p + "FORWARD"

    # --- per service port ------------------------------------------------------
    def chain(self, kind: str, *parts: object) -> str:
        return f"{self.prefix}{kind}-{P.short_hash(*parts)}"

    def new_fragment(self) -> Fragment:
        """The (empty) Fragment render fills; a mode may extend it."""
        return Fragment()

    def render(self, sps: ServicePortState) -> Fragment:
        text.check_state(sps)  # nothing object-derived reaches the rules unchecked
        frag = self.new_fragment()
        sp = sps.service
        proto = sp.protocol.lower()
        comment = f'-m comment --comment "{text.comment(str(sp))}"'
        if sp.cluster_ip:
            frag.cluster_ip = sp.cluster_ip
            match = self._match(sp.cluster_ip, proto, sp.port)
            verdict = P.cluster_ip_verdict(sps)
            if verdict == P.REJECT:
                frag.filter.append(f"-A {self.SERVICES} {match} {comment} -j REJECT")
            elif verdict == P.DROP:
                frag.filter.append(f"-A {self.SERVICES} {match} {comment} -j DROP")
            else:
                masq = P.clusterip_masquerade(self.config, self.family)
                if self.masquerade and masq == "all":
                    frag.services.append(f"-A {self.SERVICES} {match} -j {self.MARK_MASQ}")
                elif self.masquerade and masq == "non-pod":
                    frag.services.append(f"-A {self.SERVICES} {match} -j {self.NONPOD}")
                which = "local" if sp.internal_policy_local else "cluster"
                target = self.balance(sps, which, P.cluster_ip_set(sps), frag)
                frag.services.append(f"-A {self.SERVICES} {match} {comment} {target}")
        vips = P.external_vips(sps, self.config)
        if vips:
            self._external(sps, vips, proto, comment, frag)
        return frag

    def _match(self, ip: str, proto: str, port: int) -> str:
        return f"-d {ip}/{self.bits} -p {proto} -m {proto} --dport {port}"

    def _external(self, sps: ServicePortState, vips: list[P.ExternalVIP], proto: str,
                  comment: str, frag: Fragment) -> None:
        ext = self.chain("EXT", *sps.key) if sps.has_any_endpoints else None
        if ext:
            frag.nat_chains[ext] = self._ext_rules(sps, ext, proto, frag)
        fw_target = f"-j {ext}" if ext else "-j RETURN"
        for vip in vips:
            target = f"-j {ext}" if ext else None
            if vip.kind == P.LOAD_BALANCER and vip.source_allow:
                fw = self.chain("FW", *sps.key)
                frag.nat_chains[fw] = [
                    *(f"-A {fw} -s {src} {fw_target}" for src in vip.source_allow),
                    f"-A {fw} -j {self.MARK_DROP}"]
                target = f"-j {fw}"
            if vip.kind == P.NODE_PORT:
                match = f"-p {proto} -m {proto} --dport {vip.port}"
                if target:
                    frag.nodeports.append(f"-A {self.NODEPORTS} {match} {comment} {target}")
                if not ext:
                    frag.filter.append(f"-A {self.SERVICES} -d {vip.ip}/{self.bits} {match} "
                                       f"{comment} -j REJECT")
                continue
            match = self._match(vip.ip, proto, vip.port)
            if target:
                frag.services.append(f"-A {self.SERVICES} {match} {comment} {target}")
            if not ext:
                frag.filter.append(f"-A {self.SERVICES} {match} {comment} -j REJECT")

    def _ext_rules(self, sps: ServicePortState, ext: str, proto: str,
                   frag: Fragment) -> list[str]:
        p = f"-A {ext} -p {proto}"
        cluster = P.cluster_set(sps)
        to_cluster = (self.balance(sps, "cluster", cluster, frag) if cluster
                      else f"-j {self.MARK_DROP}")
        masq = [f"{p} -j {self.MARK_MASQ}"] if self.masquerade else []
        if not sps.service.external_policy_local:
            return [*masq, f"{p} {to_cluster}"]
        rules = [f"{p} {src} {to_cluster}" for src in self._pod_matches()]
        for src in P.node_local_sources(self.config, self.family):
            if self.masquerade:
                rules.append(f"{p} -s {src} -j {self.MARK_MASQ}")
            rules.append(f"{p} -s {src} {to_cluster}")
        local = P.local_set(sps)
        rules.append(f"{p} {self.balance(sps, 'local', local, frag)}" if local
                     else f"{p} -j {self.MARK_DROP}")
        return rules

    def balance(self, sps: ServicePortState, which: str, eps: tuple[Endpoint, ...],
                frag: Fragment) -> str:
        """The jump that spreads new connections over `eps` (non-empty)."""
        name = self.chain("SVC" if which == "cluster" else "SVL", *sps.key)
        if name in frag.nat_chains:
            return f"-j {name}"
        proto = sps.service.protocol.lower()
        timeout = sps.service.affinity_timeout
        eps = tuple(sorted(eps, key=lambda e: e.addr))
        seps = [self.chain("SEP", *sps.key, e.addr) for e in eps]
        rules = []
        if timeout:
            # Affinity first: a client seen recently goes back to its endpoint.
            rules += [f"-A {name} -m recent --name {sep} --mask {self._mask()} --rcheck "
                      f"--seconds {timeout} --reap -j {sep}" for sep in seps]
        n = len(seps)
        for i, sep in enumerate(seps):
            stat = (f"-m statistic --mode random --probability {1 / (n - i):.10f} "
                    if i < n - 1 else "")
            rules.append(f"-A {name} {stat}-j {sep}")
        frag.nat_chains[name] = rules
        for ep, sep in zip(eps, seps, strict=True):
            r = [f"-A {sep} -s {ep.ip}/{self.bits} -j {self.MARK_MASQ}"] if self.masquerade \
                else []
            if timeout:
                r.append(f"-A {sep} -m recent --name {sep} --mask {self._mask()} --set")
            r.append(f"-A {sep} -p {proto} -m {proto} -j DNAT --to-destination "
                     f"{join_host_port(ep.ip, ep.port)}")
            frag.nat_chains[sep] = r
        return f"-j {name}"

    def _mask(self) -> str:
        return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if self.family == 6 \
            else "255.255.255.255"

    # --- per family --------------------------------------------------------------
    def base_nat(self) -> dict[str, list[str]]:
        """The fixed nat chains (dispatch chains are assembled by the caller)."""
        chains = {
            self.MARK_MASQ: [f"-A {self.MARK_MASQ} -j MARK --or-mark {MASQ_MARK}"],
            self.MARK_DROP: [f"-A {self.MARK_DROP} -j MARK --or-mark {DROP_MARK}"],
            self.POSTROUTING: [
                f"-A {self.POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
                # Clear the bit so a packet re-entering the stack is not masqueraded twice.
                f"-A {self.POSTROUTING} -j MARK --xor-mark {MASQ_MARK}",
                f"-A {self.POSTROUTING} -j MASQUERADE --random-fully"],
        }
        pods = self._pod_matches()
        if pods:
            chains[self.NONPOD] = [*(f"-A {self.NONPOD} {m} -j RETURN" for m in pods),
                                   f"-A {self.NONPOD} -j {self.MARK_MASQ}"]
        return chains

    def _pod_matches(self) -> list[str]:
        """The local traffic detector's matches: pod CIDRs (-s), or the pods'
        interface (-i; kube-proxy's InterfaceNamePrefix / BridgeInterface)."""
        iface = P.pod_interface(self.config)
        if iface:
            return [f"-i {iface}"]
        return [f"-s {c}" for c in P.pod_cidrs(self.config, self.family)]

    def nodeport_dispatch(self) -> list[str]:
        """Last rules of nat SERVICES: NodePorts on the addresses that serve them."""
        return [f"-A {self.SERVICES} -d {ip}/{self.bits} -j {self.NODEPORTS}"
                for ip in self.config.node_port_ips(self.family)]

    def filter_tail(self, cluster_ips: list[str]) -> list[str]:
        """After the per-service filter rules: unserved ClusterIP ports, unallocated
        addresses of the service CIDRs (nftables semantics, as configured)."""
        out = []
        if self.config.reject_unknown_cluster_ip_ports:
            out += [f"-A {self.SERVICES} -d {ip}/{self.bits} -j REJECT"
                    for ip in sorted(set(cluster_ips))]
        out += [f"-A {self.SERVICES} -d {c} -j DROP" for c in self.config.service_cidrs
                if (":" in c) == (self.family == 6)]
        return out

    def firewall(self) -> list[str]:
        return [f"-A {self.FIREWALL} -m mark --mark {DROP_MARK}/{DROP_MARK} -j DROP"]

    def forward(self) -> list[str]:
        return forward_rules(self.FORWARD, P.pod_cidrs(self.config, self.family))

    def hooks(self) -> list[tuple[str, str, list[str]]]:
        """(table, built-in chain, rule args) jumps into our chains."""
        c = ["-m", "comment", "--comment", "pyagent"]
        return [
            ("nat", "PREROUTING", [*c, "-j", self.SERVICES]),
            ("nat", "OUTPUT", [*c, "-j", self.SERVICES]),
            ("nat", "POSTROUTING", [*c, "-j", self.POSTROUTING]),
            *(("filter", hook, [*c, "-j", self.FIREWALL])
               for hook in ("INPUT", "FORWARD", "OUTPUT")),
            *(("filter", hook, [*c, "-m", "conntrack", "--ctstate", "NEW",
                                 "-j", self.SERVICES])
               for hook in ("INPUT", "FORWARD", "OUTPUT")),
            # After the drops and rejects above: kube-proxy's KUBE-FORWARD.
            ("filter", "FORWARD", [*c, "-j", self.FORWARD]),
        ]


def forward_rules(chain: str, pod_cidrs: tuple[str, ...]) -> list[str]:
    """kube-proxy's KUBE-FORWARD, so that Service traffic is forwarded on a
    node whose FORWARD policy is DROP (Docker sets that): conntrack INVALID
    dropped, masquerade-marked and established/related traffic accepted; and,
    beyond kube-proxy, new connections DNATed to a pod CIDR (a pod's or an
    eTP=Local connection to a Service, which is not masqueraded)."""
    return [f"-A {chain} -m conntrack --ctstate INVALID -j DROP",
            f"-A {chain} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
            f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            *(f"-A {chain} -d {c} -m conntrack --ctstate DNAT -j ACCEPT" for c in pod_cidrs)]
