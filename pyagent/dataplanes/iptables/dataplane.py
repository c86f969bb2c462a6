"""The iptables dataplane: kube-proxy's chain layout, written with
iptables-restore --noflush.

Every service port renders to a Fragment (rules.py), kept per Service
(fragments.py). A sync
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
from collections.abc import Iterable, Mapping
from pathlib import Path

from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, Mode, SyncStatus
from pyagent.dataplanes.fragments import FragmentCache
from pyagent.dataplanes.iptables.kernel import Exec, Iptables, restore_text
from pyagent.dataplanes.iptables.rules import Fragment, Renderer

log = logging.getLogger(__name__)

TABLES = ("nat", "filter")
Chains = dict[tuple[str, str], tuple[str, ...]]  # (table, chain) -> rules


class IptablesDataplane:
    name = "iptables"

    def __init__(self, config: NodeConfig, ex: Exec | None = None,
                 families: tuple[int, ...] = (4, 6),
                 renderer: type[Renderer] = Renderer) -> None:
        self.config = config
        self.renderer_class = renderer
        self.renderers = {f: renderer(config, f) for f in families}
        self.frags: FragmentCache[PerFamily] = FragmentCache()
        self.chains = ChainWriter(self.renderers, ex)

    def setup(self) -> None:
        self.chains.setup()

    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        status = self.frags.update(states, full, lambda _svc, ports: render_ports(
            self.renderers, ports))
        self.chains.write(self.frags.in_order(), full)
        return status

    def describe(self) -> Description:
        return Description(self.name)

    def counters(self) -> None:
        return None

    def close(self) -> None:
        pass  # the rules stay for the next agent

    def cleanup(self) -> None:
        """`pyagent cleanup`'s removal (pyagent.dataplanes.registry)."""
        remove(self.config, self.renderer_class, self.chains.ex)
        self.chains.forget()
        self.frags.clear()


PerFamily = list[tuple[int, Fragment]]  # what one Service renders to, per IP family


def render_ports(renderers: Mapping[int, Renderer], ports: tuple[ServicePortState, ...]
                 ) -> PerFamily:
    return [(s.service.family, renderers[s.service.family].render(s)) for s in ports]


class ChainWriter:
    """Writes the chains of per-Service fragments with iptables-restore: the
    iptables mode's, and the helper chains of the IPVS and userspace modes
    (their renderers' prefix)."""

    def __init__(self, renderers: Mapping[int, Renderer], ex: Exec | None = None) -> None:
        self.renderers = dict(renderers)
        self.families = tuple(renderers)
        self.ex = ex
        self.ipt = {f: Iptables(f, ex) for f in self.families}
        self.prefix = next(iter(self.renderers.values())).prefix
        self.written: dict[int, Chains] = {f: {} for f in self.families}
        self.leftover: dict[int, set[tuple[str, str]]] = {f: set() for f in self.families}
        self.repair = True  # the next full write rewrites everything

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

    def forget(self) -> None:
        """After cleanup: nothing of ours is written any more."""
        self.written = {f: {} for f in self.families}

    def write(self, frags: Iterable[PerFamily], full: bool) -> None:
        """The chains of `frags` (every Service's, in order); with `full`, also
        chains left by an earlier agent go, and after a failure everything is
        rewritten."""
        frags = list(frags)
        rewrite = full and self.repair
        try:
            for fam in self.families:
                self._write(fam, self.desired(fam, frags), rewrite)
        except Exception:
            self.repair = True  # our bookkeeping may not match the kernel any more
            raise
        if rewrite:
            self.repair = False

    def desired(self, fam: int, frags: Iterable[PerFamily]) -> Chains:
        r = self.renderers[fam]
        chains: Chains = {("nat", c): tuple(v) for c, v in r.base_nat().items()}
        services: list[str] = []
        nodeports: list[str] = []
        filt: list[str] = []
        cips: list[str] = []
        for per_family in frags:
            for f, frag in per_family:
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


def present(config: NodeConfig, renderer: type[Renderer] = Renderer,
            ex: Exec | None = None) -> bool:
    """Whether chains of `renderer`'s prefix exist, in either iptables backend."""
    return any(Iptables(f, ex, backend=b).chains(t, renderer.prefix)
               for f in (4, 6) for b in backends(f) for t in TABLES)


def remove(config: NodeConfig, renderer: type[Renderer] = Renderer,
           ex: Exec | None = None) -> str:
    n = 0
    for f in (4, 6):
        for b in backends(f):
            ipt = Iptables(f, ex, backend=b)
            if any(ipt.chains(t, renderer.prefix) for t in TABLES):
                n += remove_all(ipt, renderer(config, f))
    return f"removed {n} {renderer.prefix}* chains and their hooks"


MODE = Mode("iptables", IptablesDataplane, present, remove)
