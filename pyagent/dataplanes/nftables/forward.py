"""The nftables mode's FORWARD accepts, written into the iptables filter table.

A packet passes a netfilter hook only if every base chain registered there
accepts it: an `accept` in pyagent's `inet pyagent` table ends only that
table's verdict, and a DROP policy of the iptables(-nft) filter table's
FORWARD chain (Docker sets one) still drops it. So the accepts kube-proxy's
KUBE-FORWARD makes (rules.forward_rules) must live in the table that holds
the DROP: where an iptables filter table exists (nft backend: `ip filter` /
`ip6 filter`; legacy: /proc/net/ip_tables_names lists filter), pyagent's
nftables mode keeps a PYANFT-FORWARD chain there, jumped to first from
FORWARD. A DROP policy in some other nftables table (firewalld's) is out of
reach: allow the traffic there (docs/troubleshoot.md).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from pyagent.core.config import NodeConfig
from pyagent.dataplanes.iptables import policy as P
from pyagent.dataplanes.iptables.kernel import Iptables, restore_text
from pyagent.dataplanes.iptables.rules import forward_rules

log = logging.getLogger(__name__)
CHAIN = "PYANFT-FORWARD"
HOOK = ["-m", "comment", "--comment", "pyagent", "-j", CHAIN]


def _filter_tables() -> list[Iptables]:
    """The iptables backends (per family) that have a filter table here."""
    out = []
    for family in (4, 6):
        nft_family = "ip6" if family == 6 else "ip"
        if subprocess.run(["nft", "list", "table", nft_family, "filter"], capture_output=True,
                          check=False).returncode == 0:
            out.append(Iptables(family, backend="nft"))
        names = Path("/proc/net/ip6_tables_names" if family == 6
                     else "/proc/net/ip_tables_names")
        try:
            legacy = "filter" in names.read_text().split()
        except OSError:
            legacy = False
        if legacy:
            out.append(Iptables(family, backend="legacy"))
    return out


def ensure(config: NodeConfig) -> int:
    """Write the chain and its jump wherever a filter table exists; how many."""
    n = 0
    for ipt in _filter_tables():
        rules = tuple(forward_rules(CHAIN, P.pod_cidrs(config, ipt.family)))
        try:
            ipt.restore(restore_text({"filter": ({CHAIN: rules}, set())}))
            ipt.ensure_rule("filter", "FORWARD", HOOK)
            n += 1
        except Exception as exc:  # the rest of the mode works without it
            log.warning("FORWARD accepts in %s's filter table: %s", ipt.cmd, exc)
    return n


def remove() -> int:
    n = 0
    for ipt in _filter_tables():
        if ipt.chains("filter", CHAIN):
            ipt.delete_rule("filter", "FORWARD", HOOK)
            ipt.restore(restore_text({"filter": ({}, {CHAIN})}))
            n += 1
    return n
