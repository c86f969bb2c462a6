"""`pyagent trace --bpf`: synthetic frames through the loaded TC programs
(BPF_PROG_TEST_RUN against the live maps), reported in kube-proxy's verdict
vocabulary, with the conntrack entries a synthetic flow opened removed again.
"""

from __future__ import annotations

import os
from typing import Any

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import packet as P
from pyagent.dataplanes.ebpf.tc import (
    PROG_EGRESS,
    PROG_NETDEV_INGRESS,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    TcMaps,
    open_pinned_program,
    open_pinned_tc_maps,
    test_packet,
    verdict_name,
)


def _ct_key(src: str, dst: str, sport: int, dport: int, proto: int,
            stage: int) -> L.Lb4CtKey | L.Lb6CtKey:
    if ":" in src:
        return L.Lb6CtKey(L.ip6(src), L.ip6(dst), L.be16(sport), L.be16(dport), proto, stage)
    return L.Lb4CtKey(L.ip4(src), L.ip4(dst), L.be16(sport), L.be16(dport), proto, stage)


def _forget_flow(maps: TcMaps, pkt: P.Packet) -> None:
    """Delete the conntrack entries a new flow from pkt created (the service
    entry, and from it the reply and masquerade entries)."""
    ct = maps.lb6_ct if pkt.family == 6 else maps.lb4_ct
    svc_key = _ct_key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, L.CT_INGRESS)
    entry = ct.get(svc_key)
    if entry is None:
        return
    decode = L.from_ip6 if pkt.family == 6 else L.from_ip4
    backend, bport = decode(entry.daddr), L.from_be16(entry.dport)
    masq_key = _ct_key(pkt.src, backend, pkt.sport, bport, pkt.proto, L.CT_EGRESS)
    masq = ct.get(masq_key)
    if masq is not None:
        ct.delete(_ct_key(backend, decode(masq.saddr), bport, L.from_be16(masq.sport),
                          pkt.proto, L.CT_INGRESS))
        ct.delete(masq_key)
    ct.delete(_ct_key(backend, pkt.src, bport, pkt.sport, pkt.proto, L.CT_EGRESS))
    ct.delete(svc_key)


def trace(prog_fd: int, frame: bytes, maps: TcMaps | None = None,
          keep_state: bool = False, egress_fd: int | None = None) -> dict[str, Any]:
    """Run frame through a loaded TC program and describe what it did.

    With egress_fd (lb_egress), a translated frame is also run through the
    egress program, as the real packet would be after routing, which shows
    the masquerade. Returns {"verdict" (kube-proxy vocabulary: DNAT, DROP,
    REJECT, NO_MATCH), "endpoint", "masquerade", "tc_verdict", "retval",
    "input", "output" (parsed headers; checksum errors listed), "text"}.
    With maps and not keep_state, the conntrack entries of a flow the run
    opened are removed again (the counters still count it)."""
    before = P.parse(frame)
    ct = None
    existed = True
    if maps is not None and before.proto in (P.TCP, P.UDP):
        ct = maps.lb6_ct if before.family == 6 else maps.lb4_ct
        existed = ct.get(_ct_key(before.src, before.dst, before.sport, before.dport,
                                 before.proto, L.CT_INGRESS)) is not None
    retval, out = test_packet(prog_fd, frame)
    final = out
    if egress_fd is not None and retval == TC_ACT_OK and out != frame:
        _, final = test_packet(egress_fd, out)
    if ct is not None and maps is not None and not keep_state and not existed:
        _forget_flow(maps, before)
    after = P.parse(final)
    verdict, endpoint, masq = _kube_verdict(retval, before, P.parse(out), after)
    changed = "unchanged" if final == frame else after.describe()
    return {
        "verdict": verdict,
        "endpoint": endpoint,
        "masquerade": masq,
        "tc_verdict": verdict_name(retval),
        "retval": retval,
        "input": _packet_dict(before),
        "output": _packet_dict(after),
        "text": f"{verdict_name(retval)}: {before.describe()}\n  => {changed}",
    }


def _kube_verdict(retval: int, before: P.Packet, dnat: P.Packet,
                  final: P.Packet) -> tuple[str, str | None, bool]:
    if retval == TC_ACT_SHOT:
        return "DROP", None, False
    if retval == TC_ACT_REDIRECT:
        rst = final.proto == P.TCP and final.flags & P.TCP_FLAGS["R"]
        unreach = (final.proto, final.icmp_type) in ((P.ICMP, 3), (P.ICMPV6, 1))
        return ("REJECT" if rst or unreach else "REDIRECT"), None, False
    if (dnat.dst, dnat.dport) != (before.dst, before.dport):
        return "DNAT", P.hostport(dnat.dst, dnat.dport), final.src != before.src
    return "NO_MATCH", None, False


def trace_pinned(bpffs: str, src: str, dst: str, dport: int, proto: str = "TCP",
                 sport: int = 40000, program: str = PROG_NETDEV_INGRESS,
                 payload: bytes = b"", keep_state: bool = False) -> dict[str, Any]:
    """`pyagent trace --bpf`: build a synthetic frame (TCP SYN or a UDP
    datagram), run it through the pinned (= attached) program and then
    lb_egress, against the live maps; conntrack entries it opens are
    removed again."""
    frame = P.build(src, dst, proto, sport, dport, payload)
    fd = open_pinned_program(bpffs, program)
    egress = open_pinned_program(bpffs, PROG_EGRESS)
    try:
        maps = open_pinned_tc_maps(bpffs)
        try:
            out = trace(fd, frame, maps, keep_state=keep_state, egress_fd=egress)
        finally:
            maps.close()
    finally:
        os.close(fd)
        os.close(egress)
    out["program"] = program
    return out


def _packet_dict(p: P.Packet) -> dict[str, Any]:
    out: dict[str, Any] = {"src": p.src, "dst": p.dst, "proto": p.proto, "sport": p.sport,
                           "dport": p.dport, "checksum_errors": p.errors}
    if p.proto == P.TCP:
        out["flags"] = p.flag_names
    if p.icmp_type is not None:
        out["icmp"] = {"type": p.icmp_type, "code": p.icmp_code,
                       "quoted": _packet_dict(p.quoted) if p.quoted else None}
    return out
