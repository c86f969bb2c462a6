"""The IPVS dataplane: virtual servers through netlink, VIPs held locally,
helper iptables chains (PYAIPVS-*) rendered by the iptables mode's code.

A sync renders the given Services, then writes make-before-break: VIPs and
new or changed virtual servers first, the helper rules next, and only then
removes virtual servers and VIPs that went away. A full sync also removes
virtual servers on our VIPs (or with our fwmarks) that we did not write,
e.g. left by an earlier agent.

Needs CONFIG_IP_VS (the development kernel lacks it: tests with the `vm`
marker run this mode in the qemu VM). The sysctls are per network namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ebpf import rtnl
from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, Mode, SyncStatus
from pyagent.dataplanes.fragments import FragmentCache
from pyagent.dataplanes.iptables import dataplane as ipt
from pyagent.dataplanes.iptables.kernel import Exec
from pyagent.dataplanes.ipvs.config import (
    FWMARK_SHIFT,
    LINK,
    LOCAL_TABLE,
    RTPROT_PYAGENT,
    VirtualServer,
)
from pyagent.dataplanes.ipvs.rules import IpvsFragment, IpvsRenderer

log = logging.getLogger(__name__)
SYSCTLS = {
    "net/ipv4/vs/conntrack": "1",  # so MASQUERADE sees IPVS connections
    "net/ipv4/vs/expire_nodest_conn": "1",
    "net/ipv4/vs/expire_quiescent_template": "1",
    "net/ipv4/ip_forward": "1",
}


class IpvsDataplane:
    """Virtual servers and VIPs (netlink) beside helper chains, which the
    iptables mode's ChainWriter writes from the same per-Service fragments."""
    name = "ipvs"

    def __init__(self, config: NodeConfig, ex: Exec | None = None,
                 families: tuple[int, ...] = (4, 6), scheduler: str | None = None,
                 kernel=None, holder=None) -> None:
        self.config = config
        # the config's ipvs.scheduler; $PYAGENT_IPVS_SCHEDULER still overrides it
        self.scheduler = (scheduler or os.environ.get("PYAGENT_IPVS_SCHEDULER")
                          or config.ipvs_scheduler)
        self.marks: dict[tuple, int] = {}
        self.renderers = {f: IpvsRenderer(config, f, self.scheduler, self._fwmark)
                          for f in families}
        self.frags: FragmentCache[ipt.PerFamily] = FragmentCache()
        self.chains = ipt.ChainWriter(self.renderers, ex)
        self.kernel, self.holder = kernel, holder
        self.vs: dict[tuple, VirtualServer] = {}  # what we wrote, by kernel key
        self.vips: set[str] = set()

    def _fwmark(self, key: tuple) -> int:
        if key not in self.marks:
            used = set(self.marks.values())
            mark = 1 << FWMARK_SHIFT
            while mark in used:
                mark += 1 << FWMARK_SHIFT
            self.marks[key] = mark
        return self.marks[key]

    def setup(self) -> None:
        """Runs in the node's network namespace (the agent's): the sysctls are
        per namespace, like kube-proxy's."""
        from pyagent.dataplanes.ipvs.kernel import IpvsKernel, VipHolder

        for key, value in SYSCTLS.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)
        self.kernel = self.kernel or IpvsKernel()
        self.holder = self.holder or VipHolder()
        log.info("IPVS VIPs held by %s", self.holder.ensure())
        self.adopt()
        self.chains.setup()

    def adopt(self) -> None:
        """Take over what an earlier agent wrote, so the first (full) sync updates
        in place instead of re-creating services (which drops connections)."""
        assert self.kernel is not None and self.holder is not None
        vips = self.holder.current()
        self.vips = vips
        self.vs = {vs.key: vs for vs in self.kernel.dump(
            lambda key: key[4] >= 1 << FWMARK_SHIFT or key[2] in vips)}

    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        assert self.kernel is not None and self.holder is not None, "setup() first"
        if full:  # the kernel is the truth (a failed sync may have half-written it)
            self.adopt()
        status = self.frags.update(states, full, lambda _svc, ports: ipt.render_ports(
            self.renderers, ports))
        want_vs, want_vips = self.desired_ipvs()
        have_vips = self.holder.current() if full else self.vips
        for ip in sorted(want_vips - have_vips):
            self.holder.add(ip)
        for key, vs in want_vs.items():
            old = self.vs.get(key)
            if old is None:
                self.kernel.add(vs)
            elif old != vs:
                self.kernel.update(old, vs)
        self.chains.write(self.frags.in_order(), full)
        stale = {k: v for k, v in self.vs.items() if k not in want_vs}
        if full:
            for key in self.kernel.dump_keys():
                ours = key[4] >= 1 << FWMARK_SHIFT or key[2] in have_vips | want_vips
                if ours and key not in want_vs and key not in stale:
                    fam, proto, ip, port, mark = key
                    stale[key] = VirtualServer(fam, proto, ip, port, mark, "rr", 0, ())
        for vs in stale.values():
            self.kernel.delete(vs)
        for ip in sorted(have_vips - want_vips):
            self.holder.remove(ip)
        self.vs, self.vips = want_vs, want_vips
        return status

    def desired_ipvs(self) -> tuple[dict[tuple, VirtualServer], set[str]]:
        vs: dict[tuple, VirtualServer] = {}
        vips: set[str] = set()
        for per_family in self.frags.in_order():
            for _fam, frag in per_family:
                assert isinstance(frag, IpvsFragment)
                for v in frag.virtual_servers:
                    vs.setdefault(v.key, v)  # first Service wins a shared frontend
                vips |= frag.vips
        return vs, vips

    def describe(self) -> Description:
        return Description(self.name)

    def counters(self) -> None:
        return None

    def close(self) -> None:
        for obj in (self.kernel, self.holder):
            if obj is not None:
                obj.close()

    def cleanup(self) -> None:
        """`pyagent cleanup`'s removal (pyagent.dataplanes.registry)."""
        self.close()
        remove(self.config)


def present(config: NodeConfig) -> bool:
    if ipt.present(config, IpvsRenderer):
        return True
    # rtnl, not pyroute2: this runs at every start of every mode
    with contextlib.suppress(OSError):
        return rtnl.link_index(LINK) is not None or rtnl.has_route(LOCAL_TABLE, RTPROT_PYAGENT)
    return False


def remove(config: NodeConfig) -> str:
    """Virtual servers on our VIPs and fwmarks, the VIP holder, the helper chains."""
    msg = [ipt.remove(config, IpvsRenderer)]
    try:
        from pyagent.dataplanes.ipvs.kernel import IpvsKernel, VipHolder
    except ImportError as exc:
        return f"{msg[0]}; IPVS not available ({exc})"
    holder = VipHolder()
    try:
        holder.ensure(create=False)
        vips = holder.current()
        n = 0
        with contextlib.suppress(Exception):  # no IPVS in this kernel: nothing to remove
            kernel = IpvsKernel()
            for key in kernel.dump_keys():
                if key[4] >= 1 << FWMARK_SHIFT or key[2] in vips:
                    fam, proto, ip, port, mark = key
                    kernel.delete(VirtualServer(fam, proto, ip, port, mark, "rr", 0, ()))
                    n += 1
            kernel.close()
        msg.append(f"{n} virtual servers, {holder.cleanup()} VIP holders")
    finally:
        holder.close()
    return "; ".join(msg)


MODE = Mode("ipvs", IpvsDataplane, present, remove)
