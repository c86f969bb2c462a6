"""XDP acceleration of the north-south path (Cilium's bpf-lb-acceleration):
lb_xdp_ingress in front of lb_netdev_ingress on the node interfaces.

Settings: "disabled" (TC alone), "native" (the driver's XDP; veth has it),
"generic" (the stack's XDP on any device: for testing, it runs after the
skb is built and saves little), "best-effort" (native, else generic).
Wherever XDP cannot run (no driver support, a verifier that refuses the
program, another tool's XDP program on the interface) TC serves that
interface alone, with a log line saying why: TC does everything XDP does,
so falling back, switching modes or turning XDP off never drops a flow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ebpf import xdp
from pyagent.dataplanes.ebpf.tc import PROG_XDP

log = logging.getLogger(__name__)

DISABLED = "disabled"
TRIES = {"native": (xdp.NATIVE,), "generic": (xdp.GENERIC,),
         "best-effort": (xdp.NATIVE, xdp.GENERIC)}


@dataclass(frozen=True)
class Outcome:
    ifname: str
    mode: str | None  # xdp.NATIVE | xdp.GENERIC; None: TC alone
    reason: str = ""  # why TC alone

    def describe(self) -> str:
        return f"{self.ifname}: XDP {self.mode}" if self.mode else \
            f"{self.ifname}: TC only ({self.reason})"


def _error_text(exc: BaseException) -> str:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if code:
        return os.strerror(code)
    return str(exc)


def apply(setting: str, netdevs: Iterable[str], prog_fd: int | None,
          load_error: str | None = None, netns: str | None = None) -> list[Outcome]:
    """Make each node interface run lb_xdp_ingress (prog_fd, None when it
    did not load: load_error says why) as setting asks, or not at all.
    Another tool's XDP program is never replaced or removed."""
    out = []
    with xdp.iproute(netns) as ipr:
        for ifname in netdevs:
            index = xdp.ifindex(ipr, ifname)
            current = xdp.query(ipr, index)
            ours = current is not None and current.name == PROG_XDP
            if current is not None and not ours:
                out.append(Outcome(ifname, None, f"another XDP program is attached "
                                                 f"(id {current.prog_id}, {current.name!r})"))
                continue
            if setting == DISABLED or prog_fd is None:
                if ours:
                    assert current is not None
                    xdp.detach(ipr, index, current.mode)
                out.append(Outcome(ifname, None, "disabled" if setting == DISABLED
                                   else f"the XDP program did not load: {load_error}"))
                continue
            out.append(_attach(ipr, index, ifname, prog_fd, TRIES[setting],
                               current.mode if ours and current else None))
    for o in out:
        if o.mode:
            log.info("%s", o.describe())
        elif setting != DISABLED:
            log.warning("%s; NodePort, externalIP and LoadBalancer traffic is served "
                        "by TC there", o.describe())
    return out


def _attach(ipr: object, index: int, ifname: str, prog_fd: int, modes: tuple[str, ...],
            current: str | None) -> Outcome:
    """Try modes in order; one of ours in another mode goes first (an
    interface runs one mode at a time; TC serves meanwhile)."""
    why = []
    for mode in modes:
        if current is not None and current != mode:
            xdp.detach(ipr, index, current)
            current = None
        try:
            xdp.attach(ipr, index, prog_fd, mode)
        except OSError as exc:  # pyroute2's NetlinkError is one
            why.append(f"{mode}: {_error_text(exc)}")
            continue
        return Outcome(ifname, mode)
    return Outcome(ifname, None, "; ".join(why))


def detach(netdevs: Iterable[str], netns: str | None = None) -> int:
    """Remove our XDP program from the interfaces that still exist (cleanup);
    returns how many."""
    n = 0
    with xdp.iproute(netns) as ipr:
        for ifname in netdevs:
            try:
                index = xdp.ifindex(ipr, ifname)
            except LookupError:
                continue
            current = xdp.query(ipr, index)
            if current is not None and current.name == PROG_XDP:
                xdp.detach(ipr, index, current.mode)
                n += 1
    return n


def attached(netdevs: Iterable[str], netns: str | None = None) -> dict[str, str]:
    """{ifname: "native"|"generic"} for the interfaces running our XDP."""
    out = {}
    with xdp.iproute(netns) as ipr:
        for ifname in netdevs:
            try:
                current = xdp.query(ipr, xdp.ifindex(ipr, ifname))
            except LookupError:
                continue
            if current is not None and current.name == PROG_XDP:
                out[ifname] = current.mode
    return out
