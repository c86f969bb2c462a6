"""XDP attach, query and detach over rtnetlink (IFLA_XDP) with pyroute2.

An interface runs at most one XDP program, in one mode: native (the
driver's, XDP_FLAGS_DRV_MODE) or generic (the stack's, XDP_FLAGS_SKB_MODE,
any device, after the skb is built). Programs are told apart by name, so
callers can refuse to replace one that is not theirs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ebpf import libbpf

FLAGS_UPDATE_IF_NOEXIST = 1 << 0
FLAGS_SKB_MODE = 1 << 1
FLAGS_DRV_MODE = 1 << 2
NATIVE, GENERIC = "native", "generic"
MODE_FLAGS = {NATIVE: FLAGS_DRV_MODE, GENERIC: FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED as pyroute2 names it -> our mode names
_ATTACHED = {"xdp": NATIVE, "xdpgeneric": GENERIC, "xdpdrv": NATIVE}


@dataclass(frozen=True)
class Attached:
    mode: str        # NATIVE | GENERIC | "offload" | "multi"
    prog_id: int
    name: str        # the program's name ("" if it went away meanwhile)


@contextlib.contextmanager
def iproute(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def ifindex(ipr: Any, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise LookupError(f"no interface {ifname}")
    return idx[0]


def _prog_name(prog_id: int) -> str:
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except OSError:
        return ""
    try:
        return libbpf.prog_info(fd).name
    finally:
        os.close(fd)


def query(ipr: Any, index: int) -> Attached | None:
    """The XDP program on interface index, or None."""
    link = ipr.get_links(index)[0]
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return None
    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID")
    if not attached or not prog_id:
        return None
    return Attached(_ATTACHED.get(attached, str(attached)), prog_id, _prog_name(prog_id))


def attach(ipr: Any, index: int, prog_fd: int, mode: str) -> None:
    """Run prog_fd on interface index in mode, replacing a program already
    there in that mode atomically (no moment without one). Raises the
    kernel's error (OSError / NetlinkError) when the driver or device
    cannot, e.g. EOPNOTSUPP for native mode without driver support."""
    ipr.link("set", index=index,
             xdp={"attrs": [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", MODE_FLAGS[mode])]})


def detach(ipr: Any, index: int, mode: str) -> None:
    """Remove the XDP program of mode from interface index (none: no-op)."""
    ipr.link("set", index=index,
             xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", MODE_FLAGS[mode])]})
