"""IPVS and VIP-holding through pyroute2 netlink (the only kernel code of the
IPVS mode besides the helper iptables rules).

pyroute2 (>= 0.7) speaks IPVS generic netlink: IPVS / IPVSService /
IPVSDest. Real servers are added with forwarding method MASQ (NAT); the
library's default is direct routing.

VIPs have to be local addresses so IPVS sees the packets. Like kube-proxy,
they are put on a dummy link `kube-ipvs0`. Kernels without dummy links (this
development kernel) get the fallback: a `local` route per VIP in the local
table, tagged with routing protocol 211 so cleanup finds exactly ours; it
makes the address local without assigning it to any interface (so the node
does not answer ARP for it either).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import threading
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from pyagent.dataplanes.ipvs.config import (
    FLAG_PERSISTENT,
    FWD_MASQ,
    LINK,
    LOCAL_TABLE,
    RTPROT_PYAGENT,
    RealServer,
    VirtualServer,
)

log = logging.getLogger(__name__)


def _netmask(family: int) -> str:
    # IPv6 services carry a prefix length in the (u32) netmask attribute.
    return "255.255.255.255" if family == 4 else socket.inet_ntoa(struct.pack("=I", 128))


class IpvsKernel:
    def __init__(self) -> None:
        # One pyroute2 IPVS socket per thread: created in one thread and first
        # used (generic netlink binding) in another, it fails with ECONNRESET.
        self._local = threading.local()
        self._sockets: list[Any] = []
        self.ipvs  # noqa: B018 (fail early, naming IPVS, where the kernel lacks it)

    @property
    def ipvs(self) -> Any:
        sock = getattr(self._local, "ipvs", None)
        if sock is None:
            from pyroute2 import IPVS  # imported here: pure users never need it

            try:
                sock = IPVS()
                sock.service("dump")  # binds the generic netlink family now
            except Exception as exc:  # the generic netlink family is missing
                raise RuntimeError("IPVS is not available in this kernel (CONFIG_IP_VS, "
                                   f"module ip_vs): {exc}") from exc
            self._local.ipvs = sock
            self._sockets.append(sock)
        return sock

    def _service(self, vs: VirtualServer, full: bool = True) -> Any:
        from pyroute2 import IPVSService

        af = socket.AF_INET6 if vs.family == 6 else socket.AF_INET
        fields: dict[str, Any] = {"af": af}
        if vs.fwmark:
            fields["fwmark"] = vs.fwmark
        else:
            fields.update(addr=vs.ip, port=vs.port, protocol=vs.protocol)
        if full:
            fields.update(sched_name=vs.scheduler, timeout=vs.persistence,
                          netmask=_netmask(vs.family),
                          flags={"flags": FLAG_PERSISTENT if vs.persistence else 0,
                                 "mask": 0xFFFF})
        return IPVSService(**fields)

    def _dest(self, vs: VirtualServer, r: RealServer) -> Any:
        from pyroute2 import IPVSDest

        return IPVSDest(addr=r.ip, port=r.port, fwd_method=FWD_MASQ, weight=1,
                        addr_family=socket.AF_INET6 if ":" in r.ip else socket.AF_INET)

    def add(self, vs: VirtualServer) -> None:
        """Create vs; one that already exists (left by a sync that failed
        part-way, or not recognised by adopt) is updated in place instead."""
        try:
            self.ipvs.service("add", service=self._service(vs))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            self.ipvs.service("set", service=self._service(vs))
        for r in vs.reals:
            try:
                self.ipvs.dest("add", service=self._service(vs), dest=self._dest(vs, r))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise

    def update(self, old: VirtualServer, new: VirtualServer) -> None:
        if (old.scheduler, old.persistence) != (new.scheduler, new.persistence):
            self.ipvs.service("set", service=self._service(new))
        for r in sorted(set(new.reals) - set(old.reals)):  # make before break
            self.ipvs.dest("add", service=self._service(new), dest=self._dest(new, r))
        for r in sorted(set(old.reals) - set(new.reals)):
            self.ipvs.dest("del", service=self._service(new), dest=self._dest(new, r))

    def delete(self, vs: VirtualServer) -> None:
        with contextlib.suppress(Exception):  # already gone is fine
            self.ipvs.service("del", service=self._service(vs, full=False))

    def dump_keys(self) -> list[tuple]:
        """(family, protocol, ip, port, fwmark) of every virtual server."""
        out = []
        for msg in self.ipvs.service("dump"):
            svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            if svc is None:
                continue
            af = svc.get_attr("IPVS_SVC_ATTR_AF")
            out.append((6 if af == socket.AF_INET6 else 4,
                        svc.get_attr("IPVS_SVC_ATTR_PROTOCOL") or 0,
                        svc.get_attr("IPVS_SVC_ATTR_ADDR") or "",
                        svc.get_attr("IPVS_SVC_ATTR_PORT") or 0,
                        svc.get_attr("IPVS_SVC_ATTR_FWMARK") or 0))
        return out

    def dump(self, keep) -> list[VirtualServer]:
        """The virtual servers (with real servers) whose key `keep(key)` accepts."""
        out = []
        for key in self.dump_keys():
            if not keep(key):
                continue
            fam, proto, ip, port, mark = key
            vs = VirtualServer(fam, proto, ip, port, mark, "", 0, ())
            reals = []
            for msg in self.ipvs.dest("dump", service=self._service(vs, full=False)):
                d = msg.get_attr("IPVS_CMD_ATTR_DEST")
                if d is not None:
                    reals.append(RealServer(d.get_attr("IPVS_DEST_ATTR_ADDR"),
                                            d.get_attr("IPVS_DEST_ATTR_PORT")))
            # scheduler/persistence unknown ("" / -1): the first sync "sets" them
            out.append(VirtualServer(fam, proto, ip, port, mark, "", -1, tuple(sorted(reals))))
        return out

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(Exception):
                sock.close()
        self._sockets.clear()


class VipHolder:
    """Makes VIPs local: addresses on kube-ipvs0, or tagged local routes."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self.ipr = IPRoute()
        self.link: int | None = None

    def ensure(self, create: bool = True) -> str:
        """'link' (kube-ipvs0) or 'route' (the fallback); creates the link if asked."""
        found = self.ipr.link_lookup(ifname=LINK)
        if not found and create:
            try:
                self.ipr.link("add", ifname=LINK, kind="dummy")
                found = self.ipr.link_lookup(ifname=LINK)
            except Exception as exc:  # no dummy links in this kernel
                log.info("no dummy link %s (%s): VIPs become local routes", LINK, exc)
        if found:
            self.link = found[0]
            if create:
                self.ipr.link("set", index=self.link, state="down")  # never answers ARP
            return "link"
        if create:  # local routes need lo up (it always is on a real node)
            self.ipr.link("set", index=self.ipr.link_lookup(ifname="lo")[0], state="up")
        return "route"

    def current(self) -> set[str]:
        if self.link is not None:
            return {a.get_attr("IFA_ADDRESS") for a in self.ipr.get_addr(index=self.link)}
        return {r.get_attr("RTA_DST") for fam in (socket.AF_INET, socket.AF_INET6)
                for r in self.ipr.get_routes(family=fam, table=LOCAL_TABLE,
                                             proto=RTPROT_PYAGENT)}

    def add(self, ip: str) -> None:
        plen = 128 if ":" in ip else 32
        if self.link is not None:
            self.ipr.addr("add", index=self.link, address=ip, prefixlen=plen)
        else:
            lo = self.ipr.link_lookup(ifname="lo")[0]
            self.ipr.route("replace", dst=ip, dst_len=plen, type="local", table=LOCAL_TABLE,
                           proto=RTPROT_PYAGENT, oif=lo, scope="host")

    def remove(self, ip: str) -> None:
        plen = 128 if ":" in ip else 32
        with contextlib.suppress(Exception):
            if self.link is not None:
                self.ipr.addr("del", index=self.link, address=ip, prefixlen=plen)
            else:
                lo = self.ipr.link_lookup(ifname="lo")[0]
                self.ipr.route("del", dst=ip, dst_len=plen, type="local", table=LOCAL_TABLE,
                               proto=RTPROT_PYAGENT, oif=lo, scope="host")

    def cleanup(self) -> int:
        """Remove our local routes and the link; returns how many objects went."""
        link, self.link = self.link, None
        n = 0
        for ip in self.current():
            self.remove(ip)
            n += 1
        if link is not None:
            self.ipr.link("del", index=link)
            n += 1
        return n

    def close(self) -> None:
        self.ipr.close()
