"""The nftables dataplane: one `inet pyagent` table, verdict maps, and one
`nft -f` transaction per sync.

The desired table (desired.py) is kept up to date Service by Service from
per-Service fragments. A partial sync writes only the names its Services
touched, compared with what the last successful transaction wrote: new
chains, flushed-and-refilled changed chains, element deletes/adds, and
deletes of chains and sets that went away (referrers first); its cost grows
with the change, not with the number of Services. A full sync re-renders
every Service; the first one after start and the first after a failed
transaction also rewrite every chain, flush and refill every map and set,
and delete anything else in the table (drift, what an earlier agent left).
Periodic full syncs write the difference only: rewriting 10,000 Services
costs seconds of kernel time.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping

from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, Mode, SyncStatus
from pyagent.dataplanes.fragments import FragmentCache
from pyagent.dataplanes.nftables import rules as R
from pyagent.dataplanes.nftables.desired import Assembly, Desired

log = logging.getLogger(__name__)
# Deletion order: a chain may only be deleted once nothing jumps to it.
_DELETE_RANK = {"fw": 0, "cip": 0, "ext": 1, "svc": 2, "svl": 2, "sep": 3}


class NftError(RuntimeError):
    pass


class Nft:
    """Runs `nft`; swapped for a fake in unit tests."""

    def run(self, script: str) -> None:
        proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise NftError(proc.stderr.strip()[:2000])

    def objects(self) -> tuple[set[str], set[str]] | None:
        """(chains, sets and maps) of our table; None when it does not exist."""
        proc = subprocess.run(["nft", "-j", "list", "table", *R.TABLE.split()],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return None
        chains, sets = set(), set()
        for obj in json.loads(proc.stdout).get("nftables", []):
            if "chain" in obj:
                chains.add(obj["chain"]["name"])
            for kind in ("set", "map"):
                if kind in obj:
                    sets.add(obj[kind]["name"])
        return chains, sets

    def delete_table(self) -> bool:
        return subprocess.run(["nft", "delete", "table", *R.TABLE.split()],
                              capture_output=True, check=False).returncode == 0


class NftablesDataplane:
    name = "nftables"

    def __init__(self, config: NodeConfig, nft: Nft | None = None) -> None:
        self.config = config
        self.nft = nft or Nft()
        self.renderer = R.Renderer(config)
        self.frags: FragmentCache[list[R.Fragment]] = FragmentCache()
        self.assembly = Assembly(config)
        self.written = Desired()  # what the last successful transaction left
        self.diverged = True  # nothing written yet: the first sync writes it all
        self.leftover: tuple[set[str], set[str]] = (set(), set())
        self.repair = True  # the next full sync rewrites everything
        # FORWARD accepts in the iptables filter table (forward.py); off with a
        # fake nft (unit tests), where no real iptables may be touched either.
        self.forward_helper = nft is None

    def setup(self) -> None:
        found = self.nft.objects()
        if found:
            self.leftover = found
        # The base chains and maps exist from the start, so the table is
        # consistent even before the first sync; existing ones are kept.
        lines = [f"add table {R.TABLE}"]
        lines += [f"add chain {R.TABLE} {c} {{ {spec} }}" for c, spec in R.BASE_CHAINS.items()]
        self.nft.run("\n".join(lines) + "\n")
        if self.forward_helper:
            from pyagent.dataplanes.nftables import forward

            forward.ensure(self.config)

    def describe(self) -> Description:
        return Description(self.name)

    def counters(self) -> None:
        return None

    def close(self) -> None:
        pass

    def cleanup(self) -> None:
        """`pyagent cleanup`'s removal (pyagent.dataplanes.registry)."""
        remove(self.config, self.nft, forward_helper=self.forward_helper)
        self.assembly = Assembly(self.config)
        self.written = Desired()
        self.diverged = True
        self.frags.clear()

    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        before = {} if full else {svc: self.frags.get(svc) for svc in states}
        status = self.frags.update(states, full, lambda _svc, ports: [
            self.renderer.render(s) for s in ports])
        rewrite = full and self.repair
        if full:  # every Service anew: the claims and names start clean
            self.assembly = Assembly(self.config)
            for svc, frags in self.frags.items():
                self.assembly.replace(svc, None, frags)
        else:
            for svc, old in before.items():
                self.assembly.replace(svc, old, self.frags.get(svc))
        want, touched = self.assembly.want, self.assembly.touched
        whole = full or self.diverged  # else only the touched names are compared
        if whole:
            script = transaction(self.written, want, rewrite,
                                 self.leftover if rewrite else None)
        else:
            script = transaction(touched.view(self.written), touched.view(want), False)
        if script:
            try:
                self.nft.run(script)
            except Exception:
                self.repair = True
                # what the kernel holds is still self.written; until a
                # transaction succeeds, diff the whole table against it
                self.diverged = True
                raise
        if whole:
            self.written = want.copy()
        else:
            touched.copy_into(want, self.written)
        self.assembly.written()
        self.diverged = False
        if rewrite:
            self.leftover = (set(), set())
            self.repair = False
        if full and self.forward_helper:  # a filter table made (or rebuilt) since
            from pyagent.dataplanes.nftables import forward

            forward.ensure(self.config)
        return status


def _element(key: str, value: str) -> str:
    return f"{key} : {value}" if value else key


def _delete_rank(chain: str) -> int:
    return _DELETE_RANK.get(chain.split("-", 1)[0], 4)


def transaction(have: Desired, want: Desired, full: bool,
                leftover: tuple[set[str], set[str]] | None = None) -> str:
    """The `nft -f` script that turns `have` (what we wrote) into `want`."""
    t = R.TABLE
    out = [f"add table {t}"]
    is_map = {n for n, spec in want.sets.items() if ": verdict" in spec}
    # Sets and maps before the rules that use them.
    for name, spec in want.sets.items():
        if full or have.sets.get(name) != spec:
            if name in have.sets and have.sets[name] != spec:
                out.append(f"delete {'map' if name in is_map else 'set'} {t} {name}")
            out.append(f"add {'map' if name in is_map else 'set'} {t} {name} {{ {spec} }}")
    for chain in want.chains:
        if (full or chain not in have.chains) and chain not in R.BASE_CHAINS:
            out.append(f"add chain {t} {chain}")
    # Chains jumped to are filled before the maps point at them.
    for chain, rules in want.chains.items():
        if full or have.chains.get(chain) != rules:
            out.append(f"flush chain {t} {chain}")
            out += [f"add rule {t} {chain} {r}" for r in rules]
    for name, elems in want.elements.items():
        kind = "map" if name in is_map else "set"
        old = {} if full else have.elements.get(name, {})
        if full:
            out.append(f"flush {kind} {t} {name}")
        gone = [k for k, v in old.items() if elems.get(k) != v]
        new = [k for k, v in elems.items() if old.get(k) != v]
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
        if new:
            out.append(f"add element {t} {name} {{ "
                       f"{', '.join(_element(k, elems[k]) for k in new)} }}")
    old_chains = set(have.chains) | (leftover[0] if leftover else set())
    old_sets = set(have.sets) | (leftover[1] if leftover else set())
    dead = sorted(old_chains - set(want.chains) - set(R.BASE_CHAINS), key=_delete_rank)
    for chain in dead:  # flush all first: dead chains may jump to each other
        out.append(f"flush chain {t} {chain}")
    out += [f"delete chain {t} {chain}" for chain in dead]
    for name in sorted(old_sets - set(want.sets)):
        kind = "map" if name in have.sets and ": verdict" in have.sets[name] else "set"
        if leftover and name not in have.sets:
            kind = "map" if name.startswith(("service-", "no-endpoint-", "firewall-")) \
                else "set"
        out.append(f"delete {kind} {t} {name}")
    return "\n".join(out) + "\n" if len(out) > 1 else ""


# --- mode detection and cleanup (pyagent cleanup, mode switches) ---------------

def present(config: NodeConfig) -> bool:
    from pyagent.dataplanes.nftables import forward

    return Nft().objects() is not None or bool(
        [i for i in forward._filter_tables() if i.chains("filter", forward.CHAIN)])


def remove(config: NodeConfig, nft: Nft | None = None, forward_helper: bool = True) -> str:
    from pyagent.dataplanes.nftables import forward

    helpers = forward.remove() if forward_helper else 0
    deleted = (nft or Nft()).delete_table()
    if not deleted and not helpers:
        return "nothing to clean"
    return ", ".join([*([f"deleted table {R.TABLE}"] if deleted else []),
                      *([f"removed {forward.CHAIN} from {helpers} filter tables"]
                        if helpers else [])])


MODE = Mode("nftables", NftablesDataplane, present, remove)
