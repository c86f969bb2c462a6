"""kube-proxy's leftovers on a node: find them (`pyagent run` says so in one
line) and remove them (`pyagent cleanup --kube-proxy`, `pyagent run
--cleanup`), as `kube-proxy --cleanup` does, in the network namespace this
runs in:

- iptables (both backends where present, IPv4 and IPv6): the jumps from the
  built-in chains to kube-proxy's chains, then its chains in nat, filter and
  mangle: KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-EXTERNAL-
  SERVICES, KUBE-FORWARD, KUBE-PROXY-FIREWALL, KUBE-PROXY-CANARY,
  KUBE-MARK-MASQ, KUBE-MARK-DROP, the per-Service KUBE-SVC-/SVL-/SEP-/EXT-/
  FW-/XLB- chains, and the IPVS mode's helper chains. kubelet's own chains
  (KUBE-FIREWALL, KUBE-KUBELET-CANARY) stay, and so does any chain that a
  rule outside kube-proxy's still jumps to (removing it would break that rule).
- nftables: the tables `ip kube-proxy` and `ip6 kube-proxy`.
- IPVS: the link kube-ipvs0, the virtual servers on its addresses and those
  on the node's other addresses in the NodePort range (30000-32767); other
  virtual servers stay. Skipped while pyagent's own IPVS mode uses the link.
- ipsets named KUBE-* (IPVS mode), where the ipset tool exists.

Idempotent: a second run finds nothing and says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from ebpf import rtnl
from pyagent.dataplanes.iptables.dataplane import backends
from pyagent.dataplanes.iptables.kernel import Iptables
from pyagent.dataplanes.ipvs.config import LINK as IPVS_LINK  # kube-proxy's name too

TABLES = ("nat", "filter", "mangle")
BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
OWN_CHAINS = frozenset({
    "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    # the IPVS mode's
    "KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-LOOP-BACK", "KUBE-FIRE-WALL",
    "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER",
})
OWN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
NFT_TABLES = ("ip kube-proxy", "ip6 kube-proxy")
NODE_PORT_RANGE = range(30000, 32768)


def is_kube_proxy_chain(name: str) -> bool:
    return name in OWN_CHAINS or name.startswith(OWN_PREFIXES)


@dataclass
class Table:
    """One table of iptables-save output: chains and rules per chain."""
    chains: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> "-A CHAIN ..." lines


def parse_save(text: str) -> Table:
    t = Table()
    for line in text.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            t.chains.append(name)
            t.rules.setdefault(name, [])
        elif line.startswith("-A "):
            t.rules.setdefault(line.split()[1], []).append(line)
    return t


_JUMP = re.compile(r"\s-[jg]\s+(\S+)")


def _target(rule: str) -> str | None:
    m = _JUMP.search(rule)
    return m.group(1) if m else None


def plan_table(table: Table) -> tuple[list[str], list[str], list[str]]:
    """(rules to delete, chains to remove, chains kept because something else
    still jumps to them)."""
    doomed = {c for c in table.chains if is_kube_proxy_chain(c)}
    kept: set[str] = set()
    changed = True
    while changed:  # a chain referenced from a chain we keep must stay
        changed = False
        for chain, rules in table.rules.items():
            if chain in doomed or chain in BUILTIN:
                continue
            for rule in rules:
                t = _target(rule)
                if t in doomed:
                    doomed.discard(t)
                    kept.add(t)
                    changed = True
    deletes = [rule for chain in BUILTIN for rule in table.rules.get(chain, [])
               if _target(rule) in doomed]
    return deletes, sorted(doomed), sorted(kept)


def _restore_text(table: str, deletes: list[str], chains: list[str]) -> str:
    lines = [f"*{table}"]
    lines += [f":{c} - [0:0]" for c in chains]  # flush first: they may jump to each other
    lines += ["-D" + rule[2:] for rule in deletes]
    lines += [f"-X {c}" for c in chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _iptables() -> Iterable[tuple[str, Iptables]]:
    for family in (4, 6):
        for backend in backends(family):
            ipt = Iptables(family, backend=backend)
            if shutil.which(ipt.save_cmd):
                yield f"{'ip6tables' if family == 6 else 'iptables'}-{backend}", ipt


def _iptables_state(ipt: Iptables) -> dict[str, Table]:
    return {t: parse_save(ipt.ex.run([ipt.save_cmd, "-t", t], check=False)) for t in TABLES}


def _nft_tables() -> list[str]:
    if not shutil.which("nft"):
        return []
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                         check=False).stdout
    present = {" ".join(line.split()[1:3]) for line in out.splitlines()
               if line.startswith("table ")}
    return [t for t in NFT_TABLES if t in present]


def _ipsets() -> list[str]:
    if not shutil.which("ipset"):
        return []
    out = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True,
                         check=False).stdout
    return [name for name in out.split() if name.startswith("KUBE-")]


def _pyagent_ipvs_here() -> bool:
    from pyagent.dataplanes.ipvs.rules import IpvsRenderer

    return any(ipt.chains(t, IpvsRenderer.prefix) for _, ipt in _iptables() for t in TABLES)


def _ipvs_state() -> tuple[bool, list[tuple], set[str]]:
    """(kube-ipvs0 exists, virtual servers kube-proxy made, addresses on kube-ipvs0)."""
    # rtnl, not pyroute2: `pyagent run` asks this beside its start
    idx = rtnl.link_index(IPVS_LINK)
    addrs = rtnl.addresses()
    vips = {a for i, a in addrs if i == idx} if idx is not None else set()
    local = {a for _, a in addrs}
    servers: list[tuple] = []
    if not os.path.exists("/proc/net/ip_vs"):  # not loaded: nothing there (and asking
        return idx is not None, servers, vips  # IPVS's netlink family would load it)
    with contextlib.suppress(Exception):
        from pyagent.dataplanes.ipvs.kernel import IpvsKernel

        kernel = IpvsKernel()
        try:
            servers = [k for k in kernel.dump_keys() if not k[4] and (
                k[2] in vips or (k[2] in local and k[3] in NODE_PORT_RANGE))]
        finally:
            kernel.close()
    return idx is not None, servers, vips


def leftovers() -> list[str]:
    """What kube-proxy left here, one phrase per kind (empty: nothing)."""
    found = []
    for name, ipt in _iptables():
        counts = []
        for t, table in _iptables_state(ipt).items():
            n = sum(1 for c in table.chains if is_kube_proxy_chain(c))
            if n:
                counts.append(f"{n} in {t}")
        if counts:
            found.append(f"{name}: KUBE-* chains ({', '.join(counts)})")
    found += [f"nftables table {t}" for t in _nft_tables()]
    if not _pyagent_ipvs_here():
        link, servers, _ = _ipvs_state()
        if link or servers:
            found.append(f"IPVS: {len(servers)} virtual servers" + (f", {IPVS_LINK}"
                                                                    if link else ""))
    if sets := _ipsets():
        found.append(f"{len(sets)} KUBE-* ipsets")
    return found


def cleanup() -> list[str]:
    """Remove kube-proxy's state (see the module docstring); one line per
    thing done, or one saying there was nothing."""
    out = []
    for name, ipt in _iptables():
        for t, table in _iptables_state(ipt).items():
            deletes, chains, kept = plan_table(table)
            if deletes or chains:
                ipt.ex.run([ipt.restore_cmd, "-w", "--noflush"],
                           stdin=_restore_text(t, deletes, chains))
                out.append(f"{name} {t}: removed {len(chains)} chains and {len(deletes)} "
                           "jumps to them")
            if kept:
                out.append(f"{name} {t}: kept {', '.join(kept)} (other rules jump to them)")
    for t in _nft_tables():
        subprocess.run(["nft", "delete", "table", *t.split()], check=True,
                       capture_output=True)
        out.append(f"nftables: removed table {t}")
    out += _cleanup_ipvs()
    sets = _ipsets()
    destroyed = [s for s in sets if subprocess.run(["ipset", "destroy", s], capture_output=True,
                                                   check=False).returncode == 0]
    if destroyed:
        out.append(f"ipset: destroyed {len(destroyed)} KUBE-* sets")
    return out or ["kube-proxy: nothing to clean"]


def _cleanup_ipvs() -> list[str]:
    if _pyagent_ipvs_here():
        return [f"IPVS: left alone ({IPVS_LINK} belongs to pyagent's ipvs mode here)"]
    link, servers, _ = _ipvs_state()
    out = []
    if servers:
        from pyagent.dataplanes.ipvs.config import VirtualServer
        from pyagent.dataplanes.ipvs.kernel import IpvsKernel

        kernel = IpvsKernel()
        try:
            for fam, proto, ip, port, mark in servers:
                kernel.delete(VirtualServer(fam, proto, ip, port, mark, "rr", 0, ()))
        finally:
            kernel.close()
        out.append(f"IPVS: removed {len(servers)} virtual servers")
    if link:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=IPVS_LINK)[0])
        out.append(f"IPVS: removed {IPVS_LINK}")
    return out
