"""The userspace dataplane: the iptables mode's classification (same chains,
same REJECT/DROP rules, prefix PYAUSR-) with every DNAT replaced by a
REDIRECT portal to a local listener of the proxy (proxy.py).

One listener serves one (service port, endpoint set): the cluster set and the
local set of a Service with eTP=Local get one each, so the iptables rules
still decide which set a client gets (pod / node / external sources). There
is no masquerading: the proxy always connects from the node's address.
Portals live in nat PREROUTING (pods, external clients) and OUTPUT (the
node's own processes) via PYAUSR-SERVICES.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, Mode, SyncStatus
from pyagent.dataplanes.fragments import FragmentCache
from pyagent.dataplanes.iptables import dataplane as ipt
from pyagent.dataplanes.iptables.kernel import Exec
from pyagent.dataplanes.iptables.rules import Fragment, Renderer
from pyagent.dataplanes.userspace.proxy import Proxy

ListenerId = tuple[tuple, str]  # (service port key, "cluster" | "local")
PROXIED = ("TCP", "UDP")
_PORTAL = re.compile(r"--to-ports @(\d+)@")


@dataclass(frozen=True)
class ListenerSpec:
    protocol: str
    family: int
    endpoints: tuple[tuple[str, int], ...]
    affinity: int


@dataclass
class PortalFragment(Fragment):
    """A Fragment whose REDIRECTs name listeners (`@i@`: the i-th of
    `listeners`) until the dataplane has bound them (bind_portals)."""
    listeners: dict[ListenerId, ListenerSpec] = field(default_factory=dict)


class PortalRenderer(Renderer):
    """The iptables classification with a REDIRECT portal wherever the
    iptables mode balances; pure: it names the listeners it needs."""
    prefix = "PYAUSR-"
    masquerade = False

    def new_fragment(self) -> PortalFragment:
        return PortalFragment()

    def balance(self, sps: ServicePortState, which: str, eps: tuple[Endpoint, ...],
                frag: Fragment) -> str:
        assert isinstance(frag, PortalFragment)
        sp = sps.service
        lid = (sp.key, which)
        backends = tuple((e.ip, e.port) for e in sorted(eps, key=lambda e: e.addr))
        frag.listeners[lid] = ListenerSpec(sp.protocol, sp.family, backends,
                                           sp.affinity_timeout or 0)
        return f"-j REDIRECT --to-ports @{list(frag.listeners).index(lid)}@"


def bind_portals(frag: Fragment, ports: Mapping[ListenerId, int]) -> Fragment:
    """`frag` with each portal's listener replaced by its port."""
    assert isinstance(frag, PortalFragment)
    lids = list(frag.listeners)

    def fill(rules: list[str]) -> list[str]:
        return [_PORTAL.sub(lambda m: f"--to-ports {ports[lids[int(m[1])]]}", r) for r in rules]
    return Fragment(nat_chains={c: fill(rules) for c, rules in frag.nat_chains.items()},
                    services=fill(frag.services), nodeports=fill(frag.nodeports),
                    filter=fill(frag.filter), cluster_ip=frag.cluster_ip)


class UserspaceDataplane:
    """Portal chains written by the iptables mode's ChainWriter; the listeners
    they redirect to are bound here, between rendering and writing."""
    name = "userspace"

    def __init__(self, config: NodeConfig, ex: Exec | None = None,
                 families: tuple[int, ...] = (4, 6), proxy: Proxy | None = None) -> None:
        self.config = config
        self.proxy = proxy
        self.renderers = {f: PortalRenderer(config, f) for f in families}
        self.frags: FragmentCache[ipt.PerFamily] = FragmentCache()
        self.chains = ipt.ChainWriter(self.renderers, ex)
        self.by_service: dict[ServiceKey, set[ListenerId]] = {}

    def setup(self) -> None:
        if self.proxy is None:
            self.proxy = Proxy()
        self.chains.setup()

    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        assert self.proxy is not None, "setup() first"
        before = {lid for lids in self.by_service.values() for lid in lids}
        if full:
            for svc in set(self.by_service) - set(states):
                del self.by_service[svc]
        for svc, ports in states.items():
            if not ports:
                self.by_service.pop(svc, None)
        # SCTP cannot be proxied here: those ports get no portal (a ClusterIP's
        # unserved port is rejected) and the Service reports it; its other
        # ports work.
        proxied = {svc: tuple(s for s in ports if s.service.protocol in PROXIED)
                   for svc, ports in states.items()}
        status = self.frags.update(
            {svc: ports for svc, ports in proxied.items() if ports or not states[svc]}, full,
            self._render)
        for svc, ports in states.items():
            skipped = sorted({str(s.service) for s in ports} - {str(s.service)
                                                                for s in proxied[svc]})
            if skipped and not status.get(svc):
                status[svc] = f"not proxied in userspace mode: {', '.join(skipped)}"
                if not proxied[svc]:
                    self.frags.discard(svc)
                    self.by_service.pop(svc, None)
        self.chains.write(self.frags.in_order(), full)
        after = {lid for lids in self.by_service.values() for lid in lids}
        for lid in before - after:  # no rule redirects to them any more
            self.proxy.drop(lid)
        return status

    def _render(self, svc: ServiceKey, ports: tuple[ServicePortState, ...]) -> ipt.PerFamily:
        """Render (pure), then create or update the listeners the portals name."""
        assert self.proxy is not None
        rendered = ipt.render_ports(self.renderers, ports)
        bound: dict[ListenerId, int] = {}
        for _fam, frag in rendered:
            assert isinstance(frag, PortalFragment)
            for lid, spec in frag.listeners.items():
                bound[lid] = self.proxy.ensure(lid, spec.protocol, spec.family,
                                               list(spec.endpoints), spec.affinity)
        out = [(fam, bind_portals(frag, bound)) for fam, frag in rendered]
        self.by_service[svc] = set(bound)  # only once every port rendered
        return out

    def describe(self) -> Description:
        return Description(self.name)

    def counters(self) -> None:
        return None

    def close(self) -> None:
        if self.proxy:
            self.proxy.close()
            self.proxy = None

    def cleanup(self) -> None:
        """`pyagent cleanup`'s removal (pyagent.dataplanes.registry)."""
        self.close()
        remove(self.config)
        self.chains.forget()
        self.frags.clear()


def present(config: NodeConfig) -> bool:
    return ipt.present(config, PortalRenderer)


def remove(config: NodeConfig) -> str:
    return ipt.remove(config, PortalRenderer)


MODE = Mode("userspace", UserspaceDataplane, present, remove)
