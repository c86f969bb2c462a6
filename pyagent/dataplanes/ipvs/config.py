"""IPVS virtual servers as plain values, and the scheduler mapping (pure).

Schedulers: the global default comes from the IpvsDataplane's `scheduler`
argument (the CLI takes it from the config's ipvs.scheduler, default rr, or
$PYAGENT_IPVS_SCHEDULER); a
Service overrides it with the annotation `pyagent.io/lb-algorithm`, whose
value is either an IPVS scheduler name or one of pyagent's algorithm names:

  round-robin -> rr        least-conn -> lc        maglev -> mh
  random -> rr (IPVS has no random scheduler)
  source-hash -> sh        destination-hash -> dh
  shortest-expected-delay -> sed                   never-queue -> nq
  rr, lc, dh, sh, sed, nq, mh (and wrr, wlc, lblc, lblcr, fo, ovf, twos): as is

An unknown value falls back to the global default (and is logged once).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

SCHEDULERS = frozenset({"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq",
                        "fo", "ovf", "mh", "twos"})
ALIASES = {
    "round-robin": "rr", "least-conn": "lc", "maglev": "mh", "random": "rr",
    "source-hash": "sh", "destination-hash": "dh", "shortest-expected-delay": "sed",
    "never-queue": "nq",
}
FWMARK_SHIFT = 16  # fwmarks live in the upper 16 bits; 0x4000/0x8000 stay ours
FWMARK_MASK = 0xFFFF0000
MASQ_BIT = 0x4000
FLAG_PERSISTENT = 0x0001  # IP_VS_SVC_F_PERSISTENT
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT forwarding
LINK = "kube-ipvs0"  # the VIP holder, as kube-proxy's
RTPROT_PYAGENT = 211  # routing protocol of our VIP routes (the no-dummy-link fallback)
LOCAL_TABLE = 255


def scheduler_for(annotation: str | None, default: str) -> str:
    if not annotation:
        return default
    name = ALIASES.get(annotation.strip().lower(), annotation.strip().lower())
    return name if name in SCHEDULERS else default


@dataclass(frozen=True, order=True)
class RealServer:
    ip: str
    port: int


@dataclass(frozen=True, order=True)
class VirtualServer:
    """An address virtual server (ip, port, protocol) or a fwmark one (fwmark)."""
    family: int
    protocol: int  # IPPROTO_*; 0 for fwmark services
    ip: str  # "" for fwmark services
    port: int
    fwmark: int
    scheduler: str
    persistence: int  # seconds; 0: none (ClientIP affinity -> persistent service)
    reals: tuple[RealServer, ...]

    @property
    def key(self) -> tuple:
        """What identifies the service in the kernel."""
        return (self.family, self.protocol, self.ip, self.port, self.fwmark)

    def ipvsadm(self) -> list[str]:
        """The equivalent ipvsadm commands (for docs, logs and tests)."""
        if self.fwmark:
            vs = f"-f {self.fwmark}" + (" -6" if self.family == 6 else "")
        else:
            flag = {socket.IPPROTO_TCP: "-t", socket.IPPROTO_UDP: "-u"}.get(self.protocol,
                                                                             "--sctp-service")
            host = f"[{self.ip}]" if self.family == 6 else self.ip
            vs = f"{flag} {host}:{self.port}"
        out = [f"-A {vs} -s {self.scheduler}" + (f" -p {self.persistence}"
                                                 if self.persistence else "")]
        for r in self.reals:
            host = f"[{r.ip}]" if self.family == 6 else r.ip
            out.append(f"-a {vs} -r {host}:{r.port} -m -w 1")
        return out
