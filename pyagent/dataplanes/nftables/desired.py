"""What the `inet pyagent` table should hold, kept up to date Service by
Service, so a partial sync costs what changed, not what exists.

Chains and affinity sets are named after a hash of their Service port
(rules.py), so each has one owner. Map and set elements can be claimed by
several Services (two Services naming one external IP and port, ports of one
Service sharing a ClusterIP): the first claimant in Service order wins, and
when it lets go the next one takes over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.dataplanes.nftables import rules as R

FAMILIES = (4, 6)


@dataclass
class Desired:
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)  # name -> spec (maps too)
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # set/map -> key -> value

    def copy(self) -> Desired:
        return Desired(dict(self.chains), dict(self.sets),
                       {m: dict(e) for m, e in self.elements.items()})


@dataclass
class Touched:
    """Names changed since the kernel last took a transaction."""
    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    elements: dict[str, set[str]] = field(default_factory=dict)  # set/map -> keys

    def view(self, d: Desired) -> Desired:
        """The part of d these names cover (what they hold there, if anything)."""
        return Desired(
            {c: d.chains[c] for c in self.chains if c in d.chains},
            {s: d.sets[s] for s in self.sets if s in d.sets},
            {m: {k: d.elements[m][k] for k in keys if k in d.elements.get(m, {})}
             for m, keys in self.elements.items()})

    def copy_into(self, src: Desired, dst: Desired) -> None:
        """Make these names in dst what they are in src."""
        for names, s, t in ((self.chains, src.chains, dst.chains),
                            (self.sets, src.sets, dst.sets)):
            for n in names:
                if n in s:
                    t[n] = s[n]  # type: ignore[index]
                else:
                    t.pop(n, None)
        for m, keys in self.elements.items():
            s_el, t_el = src.elements.get(m, {}), dst.elements.setdefault(m, {})
            for k in keys:
                if k in s_el:
                    t_el[k] = s_el[k]
                else:
                    t_el.pop(k, None)


def skeleton(config: NodeConfig) -> Desired:
    """Base chains, verdict maps and address sets: what exists with no Service."""
    d = Desired()
    for c, rules in R.base_rules(config).items():
        d.chains[c] = tuple(rules)
    for f in FAMILIES:
        for name, spec in R.maps(f).items():
            d.sets[name] = spec
            d.elements[name] = {}
        for name, (spec, elems) in R.static_sets(config, f).items():
            d.sets[name] = spec
            d.elements[name] = dict.fromkeys(elems, "")
    return d


def _claims(frags: Iterable[R.Fragment]) -> dict[tuple[str, str], str]:
    """(map, key) -> value a Service's fragments ask for; its first port wins."""
    out: dict[tuple[str, str], str] = {}
    for frag in frags:
        for m, key, verdict in frag.elements:
            out.setdefault((m, key), verdict)
        if frag.cluster_ip:
            out.setdefault((f"cluster-ips{6 if ':' in frag.cluster_ip else 4}",
                            frag.cluster_ip), "")
    return out


class Assembly:
    """The desired table, changed one Service at a time (replace), with the
    names each change touched."""

    def __init__(self, config: NodeConfig) -> None:
        self.want = skeleton(config)
        self.touched = Touched()
        # element -> {Service: value} of every claimant
        self._claimants: dict[tuple[str, str], dict[ServiceKey, str]] = {}

    def written(self) -> None:
        """The kernel took every change so far: start a new list of names."""
        self.touched = Touched()

    def replace(self, svc: ServiceKey, old: list[R.Fragment] | None,
                new: list[R.Fragment] | None) -> None:
        w, t = self.want, self.touched
        for frag in old or ():
            for c in frag.chains:
                w.chains.pop(c, None)
                t.chains.add(c)
            for s in frag.sets:
                w.sets.pop(s, None)
                t.sets.add(s)
        for frag in new or ():
            for c, rules in frag.chains.items():
                w.chains[c] = tuple(rules)
                t.chains.add(c)
            for s, spec in frag.sets.items():
                w.sets[s] = spec
                t.sets.add(s)
        before, after = _claims(old or ()), _claims(new or ())
        for elem in before.keys() | after.keys():
            if before.get(elem) == after.get(elem):
                continue
            claim = self._claimants.setdefault(elem, {})
            if elem in after:
                claim[svc] = after[elem]
            else:
                claim.pop(svc, None)
            m, key = elem
            if claim:
                w.elements[m][key] = claim[min(claim)]
            else:
                del self._claimants[elem]
                w.elements[m].pop(key, None)
            t.elements.setdefault(m, set()).add(key)
