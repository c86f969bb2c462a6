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

from collections.abc import Mapping

from pyagent.config import NodeConfig
from pyagent.dataplanes.base import SyncStatus
from pyagent.dataplanes.iptables import dataplane as ipt
from pyagent.dataplanes.iptables.kernel import Exec
from pyagent.dataplanes.iptables.rules import Fragment, Renderer
from pyagent.dataplanes.userspace.proxy import Proxy
from pyagent.model import Endpoint, ServiceKey
from pyagent.state import ServicePortState

ListenerId = tuple[tuple, str]
PROXIED = ("TCP", "UDP")  # (service port key, "cluster" | "local")


class PortalRenderer(Renderer):
    prefix = "PYAUSR-"
    masquerade = False
    proxy: Proxy | None = None  # set by the dataplane before rendering
    used: set[ListenerId]

    def balance(self, sps: ServicePortState, which: str, eps: tuple[Endpoint, ...],
                frag: Fragment) -> str:
        sp = sps.service
        assert self.proxy is not None
        lid = (sp.key, which)
        port = self.proxy.ensure(lid, sp.protocol, sp.family,
                                 [(e.ip, e.port) for e in sorted(eps, key=lambda e: e.addr)],
                                 sp.affinity_timeout or 0)
        self.used.add(lid)
        return f"-j REDIRECT --to-ports {port}"


class UserspaceDataplane(ipt.IptablesDataplane):
    name = "userspace"
    renderer_class = PortalRenderer

    def __init__(self, config: NodeConfig, ex: Exec | None = None,
                 families: tuple[int, ...] = (4, 6), proxy: Proxy | None = None) -> None:
        super().__init__(config, ex, families)
        self.proxy = proxy
        self.by_service: dict[ServiceKey, set[ListenerId]] = {}
        self._before: set[ListenerId] = set()

    def setup(self) -> None:
        if self.proxy is None:
            self.proxy = Proxy()
        super().setup()

    def render_states(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
                      full: bool) -> SyncStatus:
        assert self.proxy is not None, "setup() first"
        self._before = {lid for lids in self.by_service.values() for lid in lids}
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
        status = super().render_states(
            {svc: ports for svc, ports in proxied.items() if ports or not states[svc]}, full)
        for svc, ports in states.items():
            skipped = sorted({str(s.service) for s in ports} - {str(s.service)
                                                                for s in proxied[svc]})
            if skipped and not status.get(svc):
                status[svc] = f"not proxied in userspace mode: {', '.join(skipped)}"
                if not proxied[svc]:
                    self.frags.pop(svc, None)
                    self.by_service.pop(svc, None)
        return status

    def render_service(self, svc: ServiceKey, ports: tuple[ServicePortState, ...]
                       ) -> list[tuple[int, Fragment]]:
        used: set[ListenerId] = set()
        for r in self.renderers.values():
            assert isinstance(r, PortalRenderer)
            r.proxy, r.used = self.proxy, used
        out = super().render_service(svc, ports)
        self.by_service[svc] = used  # only once every port rendered
        return out

    def after_write(self) -> None:
        assert self.proxy is not None
        after = {lid for lids in self.by_service.values() for lid in lids}
        for lid in self._before - after:  # no rule redirects to them any more
            self.proxy.drop(lid)

    def close(self) -> None:
        if self.proxy:
            self.proxy.close()
            self.proxy = None


def present(config: NodeConfig) -> bool:
    return ipt.present(config, PortalRenderer)


def remove(config: NodeConfig) -> str:
    return ipt.remove(config, PortalRenderer)
