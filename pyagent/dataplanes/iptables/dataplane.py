"""The iptables dataplane: kube-proxy's chain layout, written with
iptables-restore --noflush.

Every service port renders to a Fragment (rules.py), kept per Service. A sync
re-renders only the Services it is given, assembles the dispatch chains from
the kept fragments and writes just the chains whose rules differ from what
the last successful restore wrote, plus `-X` for chains that went away. A
full sync re-renders every Service; it rewrites every chain (repairing
drift) only when the kernel may differ from what we believe: the first sync
after start, which also removes chains with our prefix left by an earlier
agent, and the first after a failed restore. Rewriting 10,000 Services'
chains on every periodic resync would cost seconds for nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pyagent.config import NodeConfig
from pyagent.dataplanes.base import SyncStatus
from pyagent.dataplanes.iptables.kernel import Exec, Iptables, restore_text
from pyagent.dataplanes.iptables.rules import Fragment, Renderer
from pyagent.model import ServiceKey
from pyagent.state import ServicePortState

log = logging.getLogger(__name__)

TABLES = ("nat", "filter")
Chains = dict[tuple[str, str], tuple[str, ...]]  # (table, chain) -> rules


class IptablesDataplane:
    name = "iptables"
    renderer_class: type[Renderer] = Renderer

    def __init__(self, config: NodeConfig, ex: Exec | None = None,
                 families: tuple[int, ...] = (4, 6)) -> None:
        self.config = config
        self.families = families
        self.renderers = {f: self.renderer_class(config, f) for f in families}
        self.ipt = {f: Iptables(f, ex) for f in families}
        self.prefix = self.renderer_class.prefix
        self.frags: dict[ServiceKey, list[tuple[int, Fragment]]] = {}
        self.written: dict[int, Chains] = {f: {} for f in families}
        self.leftover: dict[int, set[tuple[str, str]]] = {f: set() for f in families}
        self.repair = True  # the next full sync rewrites everything

    # --- lifecycle ---------------------------------------------------------------
    def setup(self) -> None:
        for fam in self.families:
            ipt, r = self.ipt[fam], self.renderers[fam]
            existing = {(t, c) for t in TABLES for c in ipt.chains(t, self.prefix)}
            self.leftover[fam] = existing
            # Create the chains the hooks jump to, without flushing existing
            # ones: a restarted agent keeps serving until its first sync.
            base = {("nat", r.SERVICES), ("nat", r.NODEPORTS), ("nat", r.POSTROUTING),
                    ("filter", r.FIREWALL), ("filter", r.SERVICES), ("filter", r.FORWARD)}
            missing = base - existing
            ipt.restore(restore_text({t: ({c: () for tt, c in missing if tt == t}, set())
                                      for t in TABLES}))
            for table, chain, args in reversed(r.hooks()):
                ipt.ensure_rule(table, chain, args)

    def close(self) -> None:
        pass  # the rules stay for the next agent

    def cleanup(self) -> None:
        for fam in self.families:
            remove_all(self.ipt[fam], self.renderers[fam])
            self.written[fam] = {}
        self.frags.clear()

    # --- sync --------------------------------------------------------------------
    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        status = self.render_states(states, full)
        self.write_all(full)
        self.after_write()
        return status

    def write_all(self, full: bool) -> None:
        rewrite = full and self.repair
        try:
            for fam in self.families:
                self._write(fam, self.desired(fam), rewrite)
        except Exception:
            self.repair = True  # our bookkeeping may not match the kernel any more
            raise
        if rewrite:
            self.repair = False

    def render_states(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
                      full: bool) -> SyncStatus:
        status: SyncStatus = {}
        if full:
            for svc in set(self.frags) - set(states):
                del self.frags[svc]
        for svc, ports in states.items():
            if not ports:
                self.frags.pop(svc, None)
                status[svc] = None
                continue
            try:
                self.frags[svc] = self.render_service(svc, ports)
                status[svc] = None
            except Exception as exc:  # keep the previous rules of this Service
                log.exception("rendering %s/%s", *svc)
                status[svc] = f"render failed: {exc}"
        return status

    def render_service(self, svc: ServiceKey, ports: tuple[ServicePortState, ...]
                       ) -> list[tuple[int, Fragment]]:
        return [(s.service.family, self.renderers[s.service.family].render(s)) for s in ports]

    def after_write(self) -> None:
        """Hook for subclasses (userspace listeners) once the rules are written."""

    def desired(self, fam: int) -> Chains:
        r = self.renderers[fam]
        chains: Chains = {("nat", c): tuple(v) for c, v in r.base_nat().items()}
        services: list[str] = []
        nodeports: list[str] = []
        filt: list[str] = []
        cips: list[str] = []
        for svc in sorted(self.frags):
            for f, frag in self.frags[svc]:
                if f != fam:
                    continue
                chains.update({("nat", c): tuple(v) for c, v in frag.nat_chains.items()})
                services += frag.services
                nodeports += frag.nodeports
                filt += frag.filter
                if frag.cluster_ip:
                    cips.append(frag.cluster_ip)
        chains[("nat", r.SERVICES)] = (*services, *r.nodeport_dispatch())
        chains[("nat", r.NODEPORTS)] = tuple(nodeports)
        chains[("filter", r.FIREWALL)] = tuple(r.firewall())
        chains[("filter", r.FORWARD)] = tuple(r.forward())
        chains[("filter", r.SERVICES)] = (*filt, *r.filter_tail(cips))
        return chains

    def _write(self, fam: int, want: Chains, full: bool) -> None:
        have = self.written[fam]
        write = {k: v for k, v in want.items() if full or have.get(k) != v}
        gone = (set(have) | (self.leftover[fam] if full else set())) - set(want)
        if not write and not gone:
            return
        text = restore_text({t: ({c: v for (tt, c), v in write.items() if tt == t},
                                 {c for tt, c in gone if tt == t}) for t in TABLES})
        self.ipt[fam].restore(text)
        self.written[fam] = dict(want)
        if full:
            self.leftover[fam] = set()
        (log.info if full else log.debug)("iptables v%d: wrote %d chains, removed %d%s", fam,
                                          len(write), len(gone), " (full rewrite)" if full else "")


def remove_all(ipt: Iptables, r: Renderer) -> int:
    """Unhook and delete every chain with `r.prefix` (idempotent); returns how many."""
    for table, chain, args in r.hooks():
        ipt.delete_rule(table, chain, args)
    chains = {t: ipt.chains(t, r.prefix) for t in TABLES}
    text = restore_text({t: ({}, cs) for t, cs in chains.items()})
    if text:
        ipt.restore(text)
    return sum(len(cs) for cs in chains.values())


# --- mode detection and cleanup (pyagent cleanup, mode switches) ---------------

def backends(family: int) -> list[str]:
    """The iptables backends that may hold our rules in this namespace.

    Legacy only when legacy tables exist here (/proc/net is per namespace):
    merely running iptables-legacy-save instantiates the legacy tables, and
    registering their NAT hooks let a few new connections through un-NATed
    (measured: refused connections during an agent restart)."""
    names = Path("/proc/net/ip6_tables_names" if family == 6 else "/proc/net/ip_tables_names")
    try:
        legacy = bool(names.read_text().strip())
    except OSError:
        legacy = False
    return ["nft", "legacy"] if legacy else ["nft"]


def present(config: NodeConfig, renderer: type[Renderer] = Renderer) -> bool:
    """Whether chains of `renderer`'s prefix exist, in either iptables backend."""
    return any(Iptables(f, backend=b).chains(t, renderer.prefix)
               for f in (4, 6) for b in backends(f) for t in TABLES)


def remove(config: NodeConfig, renderer: type[Renderer] = Renderer) -> str:
    n = 0
    for f in (4, 6):
        for b in backends(f):
            ipt = Iptables(f, backend=b)
            if any(ipt.chains(t, renderer.prefix) for t in TABLES):
                n += remove_all(ipt, renderer(config, f))
    return f"removed {n} {renderer.prefix}* chains and their hooks"
