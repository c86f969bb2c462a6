"""nftables objects for one service port, and the fixed skeleton (pure).

One table, `inet pyagent`, for both families. Lookups go through verdict maps
keyed on (address, protocol, port), so the cost of classifying a packet does
not grow with the number of Services:

  nat-prerouting / nat-output (dstnat) -> services:
      daddr . l4proto . dport vmap @service-ips{4,6}        -> cip-<h> / ext-<h>
      daddr @nodeport-ips{4,6} l4proto . dport vmap @service-nodeports{4,6}
  cip-<h>   ClusterIP: masquerade unless from a pod, then svc-<h> / svl-<h>
  ext-<h>   externalTrafficPolicy branches (drop when the policy leaves nothing)
  svc-<h> / svl-<h>  cluster / local set: affinity sets, then a numgen cascade
  sep-<h>   one endpoint: hairpin masquerade, affinity update, dnat
  filter-prerouting / filter-output (dstnat-10): firewall-check (LB source
      ranges, fw-<h>), endpoints-check: @no-endpoint-* maps reject or drop
  filter-input / filter-forward (-110): endpoints-check; forward and
      filter-output-post-dnat (-90): cluster-ips-check (unserved ClusterIP
      ports rejected, unallocated service CIDR addresses dropped)
  nat-postrouting (srcnat) -> masquerading: marked packets (0x4000).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, join_host_port
from pyagent.core.state import ServicePortState
from pyagent.dataplanes import text
from pyagent.dataplanes.iptables import policy as P

TABLE = "inet pyagent"
MASQ_MARK = "0x00004000"


def fam(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def addr_type(family: int) -> str:
    return "ipv6_addr" if family == 6 else "ipv4_addr"


@dataclass
class Fragment:
    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)  # affinity sets: name -> spec
    elements: list[tuple[str, str, str]] = field(default_factory=list)  # (map, key, verdict)
    cluster_ip: str | None = None


class Renderer:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    def render(self, sps: ServicePortState) -> Fragment:
        # Names only ever appear hashed here; every other value must be canonical.
        text.check_state(sps)
        frag = Fragment()
        sp = sps.service
        f, proto = sp.family, sp.protocol.lower()
        h = P.port_id(sps)
        if sp.cluster_ip:
            frag.cluster_ip = sp.cluster_ip
            key = f"{sp.cluster_ip} . {proto} . {sp.port}"
            verdict = P.cluster_ip_verdict(sps)
            if verdict == P.REJECT:
                frag.elements.append((f"no-endpoint-services{f}", key, "goto reject-chain"))
            elif verdict == P.DROP:
                frag.elements.append((f"no-endpoint-services{f}", key, "drop"))
            else:
                cip = f"cip-{h}"
                rules = []
                masq = P.clusterip_masquerade(self.config, f)
                if masq == "all":
                    rules.append("jump mark-for-masquerade")
                elif masq == "non-pod":
                    rules.append(f"{self._pod_match(f, negate=True)} jump mark-for-masquerade")
                which = "local" if sp.internal_policy_local else "cluster"
                rules.append(self.balance(sps, which, P.cluster_ip_set(sps), frag))
                frag.chains[cip] = rules
                frag.elements.append((f"service-ips{f}", key, f"goto {cip}"))
        vips = P.external_vips(sps, self.config)
        if vips:
            self._external(sps, vips, h, proto, frag)
        return frag

    def _external(self, sps: ServicePortState, vips: list[P.ExternalVIP], h: str,
                  proto: str, frag: Fragment) -> None:
        f = sps.service.family
        ext = f"ext-{h}" if sps.has_any_endpoints else None
        if ext:
            frag.chains[ext] = self._ext_rules(sps, frag)
        node_ports_done = False
        for vip in vips:
            if vip.kind == P.NODE_PORT:
                if node_ports_done:  # one element per port, the address set is shared
                    continue
                node_ports_done = True
                key = f"{proto} . {vip.port}"
                if ext:
                    frag.elements.append((f"service-nodeports{f}", key, f"goto {ext}"))
                else:
                    frag.elements.append((f"no-endpoint-nodeports{f}", key, "goto reject-chain"))
                continue
            key = f"{vip.ip} . {proto} . {vip.port}"
            if vip.kind == P.LOAD_BALANCER and vip.source_allow:
                fw = f"fw-{h}"
                allow = ", ".join(vip.source_allow)
                frag.chains[fw] = [f"{fam(f)} saddr != {{ {allow} }} drop"]
                frag.elements.append((f"firewall-ips{f}", key, f"goto {fw}"))
            if ext:
                frag.elements.append((f"service-ips{f}", key, f"goto {ext}"))
            else:
                frag.elements.append((f"no-endpoint-services{f}", key, "goto reject-chain"))

    def _ext_rules(self, sps: ServicePortState, frag: Fragment) -> list[str]:
        f = sps.service.family
        cluster = P.cluster_set(sps)
        to_cluster = self.balance(sps, "cluster", cluster, frag) if cluster else "drop"
        if not sps.service.external_policy_local:
            return ["jump mark-for-masquerade", to_cluster]
        rules = []
        if P.has_pod_detector(self.config, f):
            rules.append(f"{self._pod_match(f)} {to_cluster}")
        rules += [f"{fam(f)} saddr @node-local{f} jump mark-for-masquerade",
                  f"{fam(f)} saddr @node-local{f} {to_cluster}"]
        local = P.local_set(sps)
        rules.append(self.balance(sps, "local", local, frag) if local else "drop")
        return rules

    def _pod_match(self, f: int, negate: bool = False) -> str:
        """The local traffic detector: from the pod CIDRs, or (kube-proxy's
        interface detectors) in through the pods' interface ("veth+" is the
        iptables spelling of the prefix match nft writes "veth*")."""
        op = "!= " if negate else ""
        iface = P.pod_interface(self.config)
        if iface:
            name = iface[:-1] + "*" if iface.endswith("+") else iface
            return f'iifname {op}"{name}"'
        return f"{fam(f)} saddr {op}@pod-cidrs{f}"

    def balance(self, sps: ServicePortState, which: str, eps: tuple[Endpoint, ...],
                frag: Fragment) -> str:
        """The verdict that spreads new connections over `eps` (non-empty)."""
        sp = sps.service
        f = sp.family
        name = f"{'svc' if which == 'cluster' else 'svl'}-{P.port_id(sps)}"
        if name in frag.chains:
            return f"goto {name}"
        timeout = sp.affinity_timeout
        eps = tuple(sorted(eps, key=lambda e: e.addr))
        seps = [f"sep-{P.endpoint_id(sps, e)}" for e in eps]
        rules = []
        for ep, sep in zip(eps, seps, strict=True):
            aff = f"aff-{P.short_hash(*sp.key, ep.addr, timeout)}" if timeout else None
            if aff:
                frag.sets[aff] = (f"type {addr_type(f)}; flags dynamic,timeout; "
                                  f"timeout {timeout}s;")
                rules.append(f"{fam(f)} saddr @{aff} goto {sep}")
            r = [f"{fam(f)} saddr {ep.ip} jump mark-for-masquerade"]
            if aff:
                r.append(f"update @{aff} {{ {fam(f)} saddr }}")
            r.append(f"meta l4proto {sp.protocol.lower()} dnat {fam(f)} to "
                     f"{join_host_port(ep.ip, ep.port)}")
            frag.chains[sep] = r
        # A cascade, not `numgen ... vmap { 0 : goto a, ... }`: every such rule
        # creates an anonymous verdict map, and the kernel looks those up
        # linearly in the transaction, so a 10,000-Service full sync took
        # 70 s of kernel time instead of ~2 s. Rule i matches with
        # probability 1/(n-i), which makes the choice uniform; the cost is
        # per endpoint of one Service, never per Service.
        n = len(seps)
        rules += [f"numgen random mod {n - i} == 0 goto {sep}" for i, sep in enumerate(seps[:-1])]
        rules.append(f"goto {seps[-1]}")
        frag.chains[name] = rules
        return f"goto {name}"


# --- the skeleton ----------------------------------------------------------------

BASE_CHAINS = {
    "nat-prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "nat-output": "type nat hook output priority -100; policy accept;",
    "nat-postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "filter-prerouting": "type filter hook prerouting priority dstnat - 10; policy accept;",
    "filter-input": "type filter hook input priority -110; policy accept;",
    "filter-forward": "type filter hook forward priority -110; policy accept;",
    "filter-output": "type filter hook output priority -110; policy accept;",
    "filter-output-post-dnat": "type filter hook output priority -90; policy accept;",
}


def maps(family: int) -> dict[str, str]:
    """The verdict maps of one family: name -> spec."""
    a = addr_type(family)
    return {
        f"service-ips{family}": f"type {a} . inet_proto . inet_service : verdict;",
        f"service-nodeports{family}": "type inet_proto . inet_service : verdict;",
        f"no-endpoint-services{family}": f"type {a} . inet_proto . inet_service : verdict;",
        f"no-endpoint-nodeports{family}": "type inet_proto . inet_service : verdict;",
        f"firewall-ips{family}": f"type {a} . inet_proto . inet_service : verdict;",
    }


def static_sets(config: NodeConfig, family: int) -> dict[str, tuple[str, list[str]]]:
    """Address sets of one family: name -> (spec, elements)."""
    a = addr_type(family)
    return {
        f"pod-cidrs{family}": (f"type {a}; flags interval;",
                               list(P.pod_cidrs(config, family))),
        f"node-local{family}": (f"type {a}; flags interval;",
                                list(P.node_local_sources(config, family))),
        f"nodeport-ips{family}": (f"type {a};", list(config.node_port_ips(family))),
        f"cluster-ips{family}": (f"type {a};", []),  # elements come from the services
    }


def base_rules(config: NodeConfig) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {
        "nat-prerouting": ["jump services"],
        "nat-output": ["jump services"],
        "nat-postrouting": ["jump masquerading"],
        "filter-prerouting": ["ct state new jump firewall-check"],
        "filter-input": ["ct state new jump endpoints-check"],
        "filter-forward": ["ct state new jump endpoints-check",
                           "ct state new jump cluster-ips-check"],
        "filter-output": ["ct state new jump firewall-check",
                          "ct state new jump endpoints-check"],
        "filter-output-post-dnat": ["ct state new jump cluster-ips-check"],
        "mark-for-masquerade": [f"meta mark set meta mark | {MASQ_MARK}"],
        "masquerading": [f"meta mark & {MASQ_MARK} == 0 return",
                         f"meta mark set meta mark ^ {MASQ_MARK}",
                         "masquerade fully-random"],
        "reject-chain": ["reject"],
        "services": [], "firewall-check": [], "endpoints-check": [], "cluster-ips-check": [],
    }
    for f in (4, 6):
        ip = fam(f)
        chains["services"] += [
            f"{ip} daddr . meta l4proto . th dport vmap @service-ips{f}",
            f"{ip} daddr @nodeport-ips{f} meta l4proto . th dport vmap @service-nodeports{f}"]
        chains["firewall-check"].append(
            f"{ip} daddr . meta l4proto . th dport vmap @firewall-ips{f}")
        chains["endpoints-check"] += [
            f"{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services{f}",
            f"{ip} daddr @nodeport-ips{f} meta l4proto . th dport "
            f"vmap @no-endpoint-nodeports{f}"]
        if config.reject_unknown_cluster_ip_ports:
            chains["cluster-ips-check"].append(f"{ip} daddr @cluster-ips{f} reject")
        cidrs = [c for c in config.service_cidrs if (":" in c) == (f == 6)]
        if cidrs:
            chains["cluster-ips-check"].append(f"{ip} daddr {{ {', '.join(cidrs)} }} drop")
    return chains
