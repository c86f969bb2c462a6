"""The TC load balancer (bpf_src/tc_nat.c) on packet fixtures through
BPF_PROG_TEST_RUN: no interfaces, no namespaces, private (unpinned) maps.

Every fixture runs twice: on TC alone, and with lb_xdp_ingress in front of
lb_netdev_ingress as on an accelerated interface (XDP first; TC only for
what XDP hands on untouched), so both paths give the same packets and the
same conntrack. The "xdp" run also counts what XDP finished itself.

Every rewritten or generated frame is parsed back and all its checksums
recomputed (packet.parse lists any that are wrong).
"""

from __future__ import annotations

import ctypes
import itertools
import time

import bpfmaps
import pytest

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import packet as P

pytestmark = pytest.mark.root

NODE4, NODE6 = "192.168.50.10", "fd00:50::10"
CLIENT4, CLIENT6 = "203.0.113.2", "2001:db8::2"
LOCAL4 = ["10.244.0.10", "10.244.0.11", "10.244.0.12"]
REMOTE4 = ["10.244.1.10", "10.244.1.11"]
LOCAL6 = ["fd00:244::10", "fd00:244::11", "fd00:244::12"]
REMOTE6 = ["fd00:244:1::10", "fd00:244:1::11"]
F = L.ServiceFlag
OK, SHOT, REDIRECT = 0, 2, 7

_ids = itertools.count(1)
_ports = itertools.count(30000)


@pytest.fixture(scope="module", params=["tc", "xdp"])
def lb(request):
    from pyagent.dataplanes.ebpf import socket_lb, tc

    caps = socket_lb.Capacities(1024, 1024, 1024, 64, 256, 1 << 17)  # ids past 16 bits
    with tc.load(None, caps, tc.TcCapacities(ct=4096, src_range=64),
                 xdp=request.param == "xdp") as lb:
        assert lb.xdp_error is None
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6)
        lb.path = request.param
        yield lb


def run(lb, prog: str, frame: bytes) -> tuple[int, bytes]:
    from pyagent.dataplanes.ebpf import tc

    return tc.test_packet(lb.prog_fds[prog], frame)


def ingress(lb, frame):
    """A frame entering a node interface: XDP then TC on the "xdp" path."""
    from pyagent.dataplanes.ebpf import tc

    if lb.path == "tc":
        return run(lb, "lb_netdev_ingress", frame)
    done = bpfmaps.tc_stats(lb.maps)["xdp_done"]
    ret, out = tc.test_xdp_packet(lb.prog_fds[tc.PROG_XDP], frame)
    finished = bpfmaps.tc_stats(lb.maps)["xdp_done"] - done
    assert ret in (tc.XDP_PASS, tc.XDP_DROP) and finished in (0, 1)
    if finished:
        return (OK if ret == tc.XDP_PASS else SHOT), out
    assert (ret, out) == (tc.XDP_PASS, frame), "handed to TC, but not untouched"
    return run(lb, "lb_netdev_ingress", frame)


def egress(lb, frame):
    return run(lb, "lb_egress", frame)


def parsed(frame: bytes) -> P.Packet:
    p = P.parse(frame)
    assert p.errors == [], p.describe()
    return p


def frontend(lb, vip: str, port: int, proto: str, backends: list[tuple[str, int, bool]],
             flags: int = 0, scope: int = L.SCOPE_EXTERNAL, rev: int | None = None) -> int:
    """Backends, slots, then the master entry; returns the service id."""
    rev = next(_ids) if rev is None else rev
    v6 = ":" in vip
    maps = lb.lb_maps
    bmap = maps.lb6_backends if v6 else maps.lb4_backends
    smap = maps.lb6_services if v6 else maps.lb4_services
    for slot, (addr, bport, local) in enumerate(backends, 1):
        bid = next(_ids)
        bmap.set(ctypes.c_uint32(bid), L.backend_value(
            addr, bport, proto, flags=L.BACKEND_F_LOCAL if local else 0))
        smap.set(L.service_key(vip, port, proto, slot=slot, scope=scope),
                 L.LbService(backend_id=bid))
    smap.set(L.service_key(vip, port, proto, scope=scope),
             L.LbService(count=len(backends), rev_nat_id=rev, flags=flags))
    return rev


def fam(v6: bool):
    return (NODE6, CLIENT6, LOCAL6, REMOTE6) if v6 else (NODE4, CLIENT4, LOCAL4, REMOTE4)


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_dnat_then_reverse_nat_keeps_client_ip(lb, v6, proto):
    node, client, local, _ = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, proto, [(local[0], 8080, True)], F.NODE_PORT | F.LOCAL_ETP)

    ret, out = ingress(lb, P.build(client, node, proto, 40001, port, b"ping"))
    assert ret == OK
    p = parsed(out)
    assert (p.src, p.sport, p.dst, p.dport) == (client, 40001, local[0], 8080)
    assert p.payload == b"ping"

    # The backend's reply leaves the node with the frontend as its source.
    ret, out = egress(lb, P.build(local[0], client, proto, 8080, 40001, b"pong", flags="SA"))
    assert ret == OK
    p = parsed(out)
    assert (p.src, p.sport, p.dst, p.dport) == (node, port, client, 40001)

    # Later packets of the flow follow the conntrack entry.
    ret, out = ingress(lb, P.build(client, node, proto, 40001, port, b"more", flags="A"))
    assert (ret, parsed(out).dst) == (OK, local[0])


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_masquerade_to_remote_backend_round_trip(lb, v6, proto):
    node, client, _, remote = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, proto, [(remote[0], 9090, False)], F.NODE_PORT | F.MASQUERADE)

    masqueraded_round_trip(lb, proto, client, 40002, (node, port), (remote[0], 9090), node)


def masqueraded_round_trip(lb, proto: str, client: str, cport: int, fe: tuple[str, int],
                           be: tuple[str, int], node: str) -> None:
    """A new flow client:cport -> fe is DNATed to be and SNATed to the node;
    the reply comes back to the client from fe."""
    ret, out = ingress(lb, P.build(client, fe[0], proto, cport, fe[1]))
    p = parsed(out)
    assert ret == OK and (p.src, p.dst, p.dport) == (client, *be)

    # Egress (after routing): the source becomes the node with a SNAT port.
    ret, out = egress(lb, out)
    p = parsed(out)
    assert ret == OK and (p.src, p.dst, p.dport) == (node, *be)
    snat_port = p.sport
    assert L.SNAT_PORT_MIN_DEFAULT <= snat_port <= L.SNAT_PORT_MAX_DEFAULT

    # The reply comes back to node:snat_port and goes to the client ...
    ret, out = ingress(lb, P.build(be[0], node, proto, be[1], snat_port, b"r", flags="SA"))
    p = parsed(out)
    assert ret == OK and (p.src, p.sport, p.dst, p.dport) == (*be, client, cport)
    # ... and leaves with the frontend as source.
    ret, out = egress(lb, out)
    p = parsed(out)
    assert ret == OK and (p.src, p.sport, p.dst, p.dport) == (*fe, client, cport)
    assert p.payload == b"r"


def test_masquerade_flag_also_snats_local_backends(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[1], 8080, True)], F.NODE_PORT | F.MASQUERADE)
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40003, port))
    _, out = egress(lb, out)  # the pod link's egress in a real node
    assert parsed(out).src == NODE4


def test_distinct_clients_get_distinct_snat_ports(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(REMOTE4[1], 9090, False)], F.NODE_PORT | F.MASQUERADE)
    seen = set()
    for cport in range(41000, 41100):
        _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))
        _, out = egress(lb, out)
        seen.add(parsed(out).sport)
    assert len(seen) == 100


def test_a_retransmitted_syn_probes_other_masquerade_ports(lb):
    """A new flow whose probed ports are all taken is dropped; the client's
    retransmission must probe others, or the connection fails for good
    while the range still has free ports."""
    from pyagent.dataplanes.ebpf import tc

    port = next(_ports)
    backend = (REMOTE4[1], 9191)  # its reply entries are only this test's
    frontend(lb, NODE4, port, "TCP", [(*backend, False)], F.NODE_PORT | F.MASQUERADE)

    def syn(cport: int) -> tuple[int, int]:
        """(verdict, masquerade port): the port is reserved at ingress."""
        ret, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))
        if ret != OK:
            return ret, 0
        _, out = egress(lb, out)
        return ret, parsed(out).sport

    try:
        # Each new flow probes 16 random ports of the 64: about one fill in
        # a hundred takes all 64 without an early drop (then no port is free
        # to find). Such a fill is retried in a fresh range of 64, not counted.
        cports = iter(range(42000, 44000))
        for attempt in range(6):
            lo = 62000 + 64 * attempt
            tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6, port_min=lo,
                                 port_max=lo + 63)
            used: set[int] = set()
            for cport in cports:
                ret, snat = syn(cport)
                if ret == SHOT:
                    break
                used.add(snat)
            if len(used) < 64:
                break
        assert ret == SHOT and len(used) < 64, used  # a drop, with ports still free
        for _ in range(50):  # the client's retransmissions
            ret, snat = syn(cport)
            if ret == OK:
                break
        assert ret == OK and snat not in used
    finally:
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6)


def test_local_only_frontend_without_masquerade_keeps_source(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "UDP", [(LOCAL4[2], 5353, True)], F.NODE_PORT | F.LOCAL_ETP)
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "UDP", 40004, port))
    ret, out2 = egress(lb, out)  # no masquerade entry: untouched
    assert ret == OK and out2 == out


def test_new_flows_spread_over_every_backend(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(b, 8080, True) for b in LOCAL4], F.NODE_PORT)
    hits = {b: 0 for b in LOCAL4}
    for cport in range(42000, 42300):
        _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))
        hits[parsed(out).dst] += 1
    assert min(hits.values()) > 50, hits


def test_new_flows_are_counted_per_backend_and_service(lb):
    """Each new flow counts once for its backend (lb_be_stats, what
    `services list` shows) and its Service; later packets of it do not."""
    port = next(_ports)
    rev = frontend(lb, NODE4, port, "TCP", [(b, 8080, True) for b in LOCAL4[:2]], F.NODE_PORT)
    ids = {L.from_ip4(v.address): k.value for k, v in lb.lb_maps.lb4_backends.items()
           if L.from_ip4(v.address) in LOCAL4[:2] and k.value > rev}

    def counted() -> dict[str, int]:
        return {a: sum(c.value for c in lb.lb_maps.lb_be_stats.get(ctypes.c_uint32(i)))
                for a, i in ids.items()}

    before, chosen = counted(), {b: 0 for b in LOCAL4[:2]}
    svc_before = sum(s.selected for s in lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(rev)))
    for cport in range(43000, 43040):
        _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))
        chosen[parsed(out).dst] += 1
        _, again = ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port, flags="A"))
        assert parsed(again).dst == parsed(out).dst
    after = counted()
    assert {a: after[a] - before[a] for a in ids} == chosen
    assert sum(s.selected for s in lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(rev))) \
        - svc_before == 40


def test_removed_backend_moves_the_flow(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[0], 8080, True)], F.NODE_PORT)
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40005, port))
    assert parsed(out).dst == LOCAL4[0]
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[1], 8080, True)], F.NODE_PORT)  # new ids
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40005, port, flags="A"))
    assert parsed(out).dst == LOCAL4[0]  # the old backend still exists: stays
    old = [k for k, v in lb.lb_maps.lb4_backends.items() if L.from_ip4(v.address) == LOCAL4[0]]
    for k in old:
        lb.lb_maps.lb4_backends.delete(k)
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40005, port, flags="A"))
    assert parsed(out).dst == LOCAL4[1]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_drop_when_no_local_endpoint_fits(lb, v6, proto):
    node, client, *_ = fam(v6)
    port = next(_ports)
    rev = frontend(lb, node, port, proto, [], F.NODE_PORT | F.LOCAL_ETP | F.DROP_NO_BACKEND)
    ret, _ = ingress(lb, P.build(client, node, proto, 40006, port))
    assert ret == SHOT
    stats = lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(rev))
    assert sum(s.no_backend for s in stats) == 1


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_reject_tcp_with_rst(lb, v6):
    node, client, *_ = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, "TCP", [], F.NODE_PORT)
    syn = P.build(client, node, "TCP", 40007, port, flags="S", seq=777,
                  tcp_options=b"\x02\x04\x05\xb4")
    ret, out = ingress(lb, syn)
    assert ret == REDIRECT  # sent back out of the interface it came from
    p = parsed(out)
    assert (p.src, p.sport, p.dst, p.dport) == (node, port, client, 40007)
    assert p.flag_names == "RA" and p.seq == 0 and p.ack == 778
    assert (p.src_mac, p.dst_mac) == (P.NODE_MAC, P.CLIENT_MAC)
    assert len(out) == 14 + (40 if v6 else 20) + 20

    # An ACK segment is reset with its own ack number as the sequence.
    ret, out = ingress(lb, P.build(client, node, "TCP", 40008, port, b"data", flags="A",
                                   seq=5, ack=99))
    p = parsed(out)
    assert ret == REDIRECT and p.flag_names == "R" and p.seq == 99
    # A reset is never answered.
    ret, _ = ingress(lb, P.build(client, node, "TCP", 40009, port, flags="R"))
    assert ret == SHOT


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_reject_udp_with_icmp_port_unreachable(lb, v6):
    node, client, *_ = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, "UDP", [], F.NODE_PORT)
    dgram = P.build(client, node, "UDP", 40010, port, b"x" * 100)
    ret, out = ingress(lb, dgram)
    assert ret == REDIRECT
    p = parsed(out)
    assert (p.src, p.dst) == (node, client)
    assert (p.proto, p.icmp_type, p.icmp_code) == ((P.ICMPV6, 1, 4) if v6 else (P.ICMP, 3, 3))
    q = p.quoted
    assert (q.src, q.sport, q.dst, q.dport, q.proto) == (client, 40010, node, port, P.UDP)
    quoted_len = (40 if v6 else 20) + 8
    assert out[14 + (48 if v6 else 28):] == dgram[14:14 + quoted_len]


def test_udp_without_checksum_stays_without(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "UDP", [(REMOTE4[0], 5353, False)], F.NODE_PORT | F.MASQUERADE)
    ret, out = ingress(lb, P.build(CLIENT4, NODE4, "UDP", 40011, port, b"q",
                                   udp_checksum=False))
    _, out = egress(lb, out)
    p = parsed(out)
    assert ret == OK and (p.src, p.dst) == (NODE4, REMOTE4[0])
    assert out[14 + 20 + 6:14 + 20 + 8] == b"\0\0"


@pytest.mark.parametrize("prog", ["lb_netdev_ingress", "lb_pod_ingress", "lb_egress"])
def test_pass_through_is_byte_identical(lb, prog):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[0], 8080, True)], F.NODE_PORT)
    frames = [
        P.build(CLIENT4, NODE4, "TCP", 40012, port + 1),  # other port
        P.build(CLIENT4, NODE4, "UDP", 40012, port),  # other protocol
        P.build(CLIENT4, "192.168.50.99", "TCP", 40012, port),  # other address
        P.build(CLIENT6, NODE6, "TCP", 40012, port),  # other family
        P.build(CLIENT4, NODE4, "TCP", 40012, port, more_fragments=True),  # fragment
        P.build(CLIENT4, NODE4, "TCP", 40012, port, frag_offset=100),
        bytes(P.NODE_MAC + P.CLIENT_MAC + b"\x08\x06" + b"\0" * 28),  # ARP
    ]
    icmp_echo = bytearray(P.build(CLIENT4, NODE4, "UDP", 1, 2))
    icmp_echo[14 + 9] = P.ICMP  # protocol byte only: not TCP/UDP, so never ours
    frames.append(bytes(icmp_echo))
    if prog != "lb_netdev_ingress":
        # Only node interfaces open flows: pods and egress never DNAT.
        frames.append(P.build(CLIENT4, NODE4, "TCP", 40013, port))
    for f in frames:
        ret, out = run(lb, prog, f)
        assert (ret, out) == (OK, f)


def test_external_scope_only(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[0], 8080, True)], F.NODE_PORT,
             scope=L.SCOPE_INTERNAL)
    f = P.build(CLIENT4, NODE4, "TCP", 40014, port)
    assert ingress(lb, f) == (OK, f)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_load_balancer_source_ranges(lb, v6):
    from pyagent.dataplanes.ebpf import tc

    vip = "fd00:99::5" if v6 else "198.51.100.5"
    allowed, blocked = (("2001:db8::2", "2001:db8:1::2") if v6
                        else ("203.0.113.2", "203.0.113.130"))
    port = next(_ports)
    rev = frontend(lb, vip, port, "TCP", [(fam(v6)[2][0], 8080, True)],
                   F.LOADBALANCER | F.SOURCE_RANGE)
    tc.set_source_ranges(lb.maps, rev, [" 203.0.113.0/25", "2001:db8::/64"])
    before = bpfmaps.tc_stats(lb.maps)["drop_range"]
    ret, out = ingress(lb, P.build(allowed, vip, "TCP", 40015, port))
    assert ret == OK and parsed(out).dport == 8080
    ret, _ = ingress(lb, P.build(blocked, vip, "TCP", 40015, port))
    assert ret == SHOT
    assert bpfmaps.tc_stats(lb.maps)["drop_range"] == before + 1
    tc.set_source_ranges(lb.maps, rev, ["0.0.0.0/0", "::/0"])
    assert ingress(lb, P.build(blocked, vip, "TCP", 40016, port))[0] == OK
    bpfmaps.clear_source_ranges(lb.maps, rev)
    assert ingress(lb, P.build(allowed, vip, "TCP", 40017, port))[0] == SHOT


def test_frontend_ids_beyond_16_bits(lb):
    """A frontend whose rev-NAT id needs more than 16 bits: its source
    ranges, affinity, conntrack entry and counters are its own, not those of
    the frontend whose id is the same modulo 2^16 (a decoy that allows every
    client, so a truncated id would let the blocked client in)."""
    from pyagent.dataplanes.ebpf import tc

    rev = 0x10000 + 0x8000 + 5  # the module's counter never reaches 0x8005
    decoy = rev & 0xFFFF
    port = next(_ports)
    frontend(lb, "198.51.100.77", port, "TCP", [(LOCAL4[0], 8080, True)],
             F.LOADBALANCER | F.SOURCE_RANGE, rev=decoy)
    tc.set_source_ranges(lb.maps, decoy, ["0.0.0.0/0"])
    frontend(lb, "198.51.100.78", port, "TCP", [(b, 8080, True) for b in LOCAL4],
             F.LOADBALANCER | F.SOURCE_RANGE | F.AFFINITY, rev=rev)
    key = L.service_key("198.51.100.78", port, "TCP", scope=L.SCOPE_EXTERNAL)
    master = lb.lb_maps.lb4_services.get(key)
    master.affinity_timeout = 600
    lb.lb_maps.lb4_services.set(key, master)
    for slot in range(1, 4):
        set_member(lb, lb.lb_maps.lb4_services.get(L.service_key(
            "198.51.100.78", port, "TCP", slot=slot, scope=L.SCOPE_EXTERNAL)).backend_id, rev)
    tc.set_source_ranges(lb.maps, rev, ["203.0.113.0/25"])
    try:
        assert ingress(lb, P.build("203.0.113.130", "198.51.100.78", "TCP", 40030, port))[0] \
            == SHOT
        dsts = {parsed(ingress(lb, P.build(CLIENT4, "198.51.100.78", "TCP", c, port))[1]).dst
                for c in range(44000, 44020)}
        assert len(dsts) == 1  # affinity keyed by the whole id
        ct = lb.maps.lb4_ct.get(L.Lb4CtKey(L.ip4(CLIENT4), L.ip4("198.51.100.78"),
                                           L.be16(44000), L.be16(port), 6, L.CT_INGRESS))
        assert ct.rev_nat_id == rev
        assert sum(s.selected for s in lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(rev))) == 20
        assert sum(s.selected for s in lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(decoy))) == 0
    finally:
        bpfmaps.clear_source_ranges(lb.maps, rev)
        bpfmaps.clear_source_ranges(lb.maps, decoy)


def test_no_masquerade_address_drops_instead_of_leaking(lb):
    from pyagent.dataplanes.ebpf import tc

    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(REMOTE4[0], 8080, False)], F.NODE_PORT | F.MASQUERADE)
    tc.write_node_config(lb.maps, snat_ip6=NODE6)  # IPv4 unset
    try:
        assert ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40018, port))[0] == SHOT
    finally:
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6)


def affinity_frontend(lb, port: int, members: bool = True) -> tuple[int, dict[str, int]]:
    """An EXTERNAL affinity frontend over LOCAL4 with a 600 s timeout and,
    with members, the lb_aff_match entries (scope EXTERNAL) the control
    plane writes. Returns (service id, {backend address: id})."""
    rev = frontend(lb, NODE4, port, "TCP", [(b, 8080, True) for b in LOCAL4],
                   F.NODE_PORT | F.AFFINITY)
    m = lb.lb_maps.lb4_services
    key = L.service_key(NODE4, port, "TCP", scope=L.SCOPE_EXTERNAL)
    master = m.get(key)
    master.affinity_timeout = 600
    m.set(key, master)
    ids = {}
    for slot in range(1, master.count + 1):
        bid = m.get(L.service_key(NODE4, port, "TCP", slot=slot,
                                  scope=L.SCOPE_EXTERNAL)).backend_id
        ids[L.from_ip4(lb.lb_maps.lb4_backends.get(ctypes.c_uint32(bid)).address)] = bid
        if members:
            set_member(lb, bid, rev)
    return rev, ids


def set_member(lb, bid: int, rev: int) -> None:
    lb.lb_maps.lb_aff_match.set(
        L.LbAffinityMatchKey(backend_id=bid, rev_nat_id=rev, scope=L.SCOPE_EXTERNAL),
        ctypes.c_uint8(1))


def test_session_affinity_pins_a_client(lb):
    port = next(_ports)
    rev, _ = affinity_frontend(lb, port)
    dsts = {parsed(ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))[1]).dst
            for cport in range(43000, 43040)}
    assert len(dsts) == 1
    assert rev  # the id keys the affinity entry


def test_affinity_to_a_backend_that_left_the_service_is_ignored(lb):
    """As on the socket path: an affinity entry counts only while
    lb_aff_match says its backend is still in the service (scope EXTERNAL)."""
    port = next(_ports)
    rev, ids = affinity_frontend(lb, port, members=False)
    # An affinity entry of this client to LOCAL4[2], whose membership is
    # gone (or, here, was never written).
    pinned = ids[LOCAL4[2]]
    akey = L.LbAffinityKey(client=L.ip4(CLIENT4), rev_nat_id=rev)
    last_used = int(time.clock_gettime(time.CLOCK_MONOTONIC))  # bpf_ktime_get_ns()
    lb.lb_maps.lb_affinity.set(akey, L.LbAffinityVal(last_used=last_used, backend_id=pinned))
    dsts = {parsed(ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))[1]).dst
            for cport in range(43100, 43160)}
    assert dsts == set(LOCAL4)  # ignored: flows spread as without affinity
    # With the membership entry, the same affinity entry is followed.
    for bid in ids.values():
        set_member(lb, bid, rev)
    lb.lb_maps.lb_affinity.set(akey, L.LbAffinityVal(last_used=last_used, backend_id=pinned))
    dsts = {parsed(ingress(lb, P.build(CLIENT4, NODE4, "TCP", cport, port))[1]).dst
            for cport in range(43200, 43240)}
    assert dsts == {LOCAL4[2]}


def test_tcp_fin_shortens_the_entry(lb):
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[0], 8080, True)], F.NODE_PORT)
    ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40019, port))
    key = L.Lb4CtKey(L.ip4(CLIENT4), L.ip4(NODE4), L.be16(40019), L.be16(port), 6,
                     L.CT_INGRESS)
    long = lb.maps.lb4_ct.get(key).expires
    ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40019, port, flags="FA"))
    entry = lb.maps.lb4_ct.get(key)
    assert entry.flags & L.CtFlag.CLOSING
    assert entry.expires < long - 1000


def test_trace_reports_verdicts_in_kube_proxy_terms(lb):
    from pyagent.dataplanes.ebpf import tc_trace

    fds = lb.prog_fds
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[0], 8080, True)], F.NODE_PORT)
    frontend(lb, NODE4, port + 1, "TCP", [(REMOTE4[0], 8080, False)],
             F.NODE_PORT | F.MASQUERADE)
    frontend(lb, NODE4, port + 2, "UDP", [], F.NODE_PORT)
    frontend(lb, NODE4, port + 3, "UDP", [], F.NODE_PORT | F.DROP_NO_BACKEND)

    def trace(dport, proto="TCP"):
        frame = P.build(CLIENT4, NODE4, proto, 40020, dport)
        return tc_trace.trace(fds["lb_netdev_ingress"], frame, lb.maps,
                              egress_fd=fds["lb_egress"])

    res = trace(port)
    assert (res["verdict"], res["endpoint"], res["masquerade"]) == (
        "DNAT", "10.244.0.10:8080", False)
    assert res["output"]["checksum_errors"] == [] and "10.244.0.10:8080" in res["text"]
    res = trace(port + 1)
    assert (res["verdict"], res["endpoint"], res["masquerade"]) == (
        "DNAT", "10.244.1.10:8080", True)
    assert res["output"]["src"] == NODE4
    assert trace(port + 2, "UDP")["verdict"] == "REJECT"
    assert trace(port + 3, "UDP")["verdict"] == "DROP"
    assert trace(port + 4)["verdict"] == "NO_MATCH"
    # The synthetic flows left no conntrack entry behind.
    keys = list(lb.maps.lb4_ct.keys())
    assert not [k for k in keys if L.be16(40020) in (k.sport, k.dport)]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_icmp_errors_of_a_masqueraded_flow_are_translated(lb, v6):
    """A remote backend's port unreachable (or frag needed) about the
    masqueraded packet reaches the client about the packet it sent."""
    node, client, _, remote = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, "UDP", [(remote[1], 5353, False)], F.NODE_PORT | F.MASQUERADE)
    _, fwd = ingress(lb, P.build(client, node, "UDP", 40021, port, b"q" * 20))
    _, fwd = egress(lb, fwd)
    snat_port = parsed(fwd).sport  # fwd is now node:snat -> backend

    quote = 48 if v6 else 28
    err = P.icmp_error(remote[1], node, fwd, quote=quote + 8)
    ret, out = ingress(lb, err)
    p = parsed(out)
    assert ret == OK and (p.src, p.dst) == (remote[1], client)
    q = p.quoted
    assert (q.src, q.sport, q.dst, q.dport) == (client, 40021, remote[1], 5353)
    ret, out = egress(lb, out)
    p = parsed(out)
    assert ret == OK and (p.src, p.dst) == (node, client)
    q = p.quoted
    assert (q.src, q.sport, q.dst, q.dport) == (client, 40021, node, port)
    assert snat_port != port

    # An error from a router on the way keeps the router's address.
    router = "fd00:50::1" if v6 else "192.168.50.1"
    exceeded = 3 if v6 else 11  # time exceeded
    _, out = ingress(lb, P.icmp_error(router, node, fwd, quote=quote, icmp_type=exceeded,
                                      code=0))
    p = parsed(out)
    assert (p.src, p.dst, p.quoted.src) == (router, client, client)
    _, out = egress(lb, out)
    p = parsed(out)
    assert (p.src, p.quoted.dst, p.quoted.dport) == (router, node, port)


def test_icmp_error_of_an_unknown_flow_passes(lb):
    stray = P.build(NODE4, REMOTE4[0], "UDP", 1234, 5353)
    err = P.icmp_error(REMOTE4[0], NODE4, stray)
    assert ingress(lb, err) == (OK, err)


def test_sync_source_ranges_diffs_and_prunes(lb):
    from pyagent.dataplanes.ebpf import tc

    assert tc.sync_source_ranges(lb.maps, {}, prune=True)[0] == 0
    assert tc.sync_source_ranges(lb.maps, {7: ["10.0.0.0/8", "fd00::/8"],
                                           8: ["192.0.2.0/24"]}) == (3, 0)
    assert tc.sync_source_ranges(lb.maps, {7: ["10.0.0.0/8"]}) == (0, 1)  # 8 untouched
    assert tc.sync_source_ranges(lb.maps, {7: ["10.0.0.0/8"]}, prune=True) == (0, 1)
    keys = [(k.rev_nat_id, k.prefixlen) for k in list(lb.maps.lb4_srcrange.keys())]
    assert keys == [(7, 32 + 8)] and list(lb.maps.lb6_srcrange.keys()) == []
    tc.sync_source_ranges(lb.maps, {}, prune=True)


def test_a_new_unmasqueraded_flow_drops_an_old_masquerade_entry(lb):
    """Same client port and backend, first through a masquerading frontend,
    then (ports reused) through a local-policy one: no stale SNAT."""
    masq, local = next(_ports), next(_ports)
    frontend(lb, NODE4, masq, "TCP", [(LOCAL4[2], 8080, True)], F.NODE_PORT | F.MASQUERADE)
    frontend(lb, NODE4, local, "TCP", [(LOCAL4[2], 8080, True)], F.NODE_PORT | F.LOCAL_ETP)
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40030, masq))
    assert parsed(egress(lb, out)[1]).src == NODE4
    _, out = ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40030, local))
    assert parsed(egress(lb, out)[1]).src == CLIENT4


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_delete_flows_to_a_backend(lb, v6):
    from pyagent.dataplanes.ebpf import tc

    node, client, local, remote = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, "UDP", [(remote[0], 7777, False)], F.NODE_PORT | F.MASQUERADE)
    _, out = ingress(lb, P.build(client, node, "UDP", 40040, port))
    egress(lb, out)
    assert tc.delete_flows_to(lb.maps, remote[0], 7777, "UDP") == 4
    assert tc.delete_flows_to(lb.maps, remote[0], 7777, "UDP") == 0


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_delete_flows_of_several_backends_keeps_the_others(lb, v6):
    """The janitor's one walk for a batch of removed backends: exactly their
    flows go (four entries each); another backend's flow stays."""
    from pyagent.dataplanes.ebpf import tc

    node, client, local, remote = fam(v6)
    ports = [next(_ports) for _ in range(3)]
    for i, port in enumerate(ports):
        frontend(lb, node, port, "UDP", [(remote[0], 7771 + i, False)],
                 F.NODE_PORT | F.MASQUERADE)
        _, out = ingress(lb, P.build(client, node, "UDP", 40050 + i, port))
        egress(lb, out)
    gone = [(remote[0], 7771, "UDP"), (remote[0], 7772, "UDP")]
    assert tc.delete_flows_of(lb.maps, gone) == 8
    assert tc.delete_flows_of(lb.maps, gone) == 0
    assert tc.delete_flows_to(lb.maps, remote[0], 7773, "UDP") == 4


# ---------------------------------------------------------------------------
# External traffic to ClusterIPs: served from the INTERNAL entry (LB_F_CLUSTER_IP
# only), masqueraded by the node's rule for the family (LB_CFG_F_MASQ_CLUSTER_IP*).

CIP4, CIP6 = "10.96.7.1", "fd00:96::7:1"


def cluster_ip(v6: bool) -> str:
    return CIP6 if v6 else CIP4


@pytest.fixture
def masq_cluster_ip(lb):
    """The node config with ClusterIP masquerade in both families, restored after."""
    from pyagent.dataplanes.ebpf import tc

    tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6, masquerade_cluster_ip=(4, 6))
    try:
        yield
    finally:
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_external_to_cluster_ip_without_masquerade_keeps_the_client(lb, v6, proto):
    """No detector, no masqueradeAll: DNAT only, to local and remote backends
    alike (kube-proxy's rule; the remote reply must route back via this node)."""
    node, client, local, remote = fam(v6)
    vip, port = cluster_ip(v6), next(_ports)
    frontend(lb, vip, port, proto, [(remote[0], 8080, False)], F.CLUSTER_IP,
             scope=L.SCOPE_INTERNAL)
    before = bpfmaps.tc_stats(lb.maps)["new"]
    ret, out = ingress(lb, P.build(client, vip, proto, 40101, port, b"ping"))
    p = parsed(out)
    assert ret == OK and (p.src, p.sport, p.dst, p.dport) == (client, 40101, remote[0], 8080)
    assert bpfmaps.tc_stats(lb.maps)["new"] == before + 1
    ret, out2 = egress(lb, out)  # no masquerade entry: untouched on the way out
    assert (ret, out2) == (OK, out)
    # The backend's reply leaves with the ClusterIP as its source.
    ret, out = egress(lb, P.build(remote[0], client, proto, 8080, 40101, b"pong", flags="SA"))
    p = parsed(out)
    assert ret == OK and (p.src, p.sport, p.dst, p.dport) == (vip, port, client, 40101)
    ret, out = ingress(lb, P.build(client, vip, proto, 40101, port, b"more", flags="A"))
    assert (ret, parsed(out).dst) == (OK, remote[0])


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_external_to_cluster_ip_masqueraded_round_trip(lb, masq_cluster_ip, v6, proto):
    """masqueradeAll or a local detector: SNAT to the node, local backend too."""
    node, client, local, _ = fam(v6)
    vip, port = cluster_ip(v6), next(_ports)
    frontend(lb, vip, port, proto, [(local[1], 8080, True)], F.CLUSTER_IP,
             scope=L.SCOPE_INTERNAL)
    masqueraded_round_trip(lb, proto, client, 40102, (vip, port), (local[1], 8080), node)


def test_cluster_ip_masquerade_is_per_family(lb):
    from pyagent.dataplanes.ebpf import tc

    tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6, masquerade_cluster_ip=(6,))
    try:
        for v6, want in ((False, CLIENT4), (True, NODE6)):
            node, client, local, _ = fam(v6)
            vip, port = cluster_ip(v6), next(_ports)
            frontend(lb, vip, port, "TCP", [(local[0], 8080, True)], F.CLUSTER_IP,
                     scope=L.SCOPE_INTERNAL)
            _, out = ingress(lb, P.build(client, vip, "TCP", 40103, port))
            _, out = egress(lb, out)
            assert parsed(out).src == want
    finally:
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_external_to_cluster_ip_with_itp_local(lb, v6):
    """iTP=Local: the INTERNAL entry holds only the node's endpoints, and
    with none here (but some elsewhere) it drops, counted."""
    node, client, local, _ = fam(v6)
    vip, port = cluster_ip(v6), next(_ports)
    frontend(lb, vip, port, "UDP", [(local[2], 5353, True)], F.CLUSTER_IP | F.LOCAL_ITP,
             scope=L.SCOPE_INTERNAL)
    for cport in range(40110, 40120):
        _, out = ingress(lb, P.build(client, vip, "UDP", cport, port))
        assert parsed(out).dst == local[2]
    rev = frontend(lb, vip, port + 1, "UDP", [],
                   F.CLUSTER_IP | F.LOCAL_ITP | F.DROP_NO_BACKEND, scope=L.SCOPE_INTERNAL)
    before = bpfmaps.tc_stats(lb.maps)["drop"]
    ret, _ = ingress(lb, P.build(client, vip, "UDP", 40121, port + 1))
    assert ret == SHOT
    assert bpfmaps.tc_stats(lb.maps)["drop"] == before + 1
    assert sum(s.no_backend for s in lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(rev))) == 1


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_external_to_cluster_ip_without_endpoints_rejects(lb, v6, proto):
    node, client, *_ = fam(v6)
    vip, port = cluster_ip(v6), next(_ports)
    rev = frontend(lb, vip, port, proto, [], F.CLUSTER_IP, scope=L.SCOPE_INTERNAL)
    before = bpfmaps.tc_stats(lb.maps)["reject"]
    ret, out = ingress(lb, P.build(client, vip, proto, 40122, port, flags="S"))
    assert ret == REDIRECT
    p = parsed(out)
    assert (p.src, p.dst) == (vip, client)
    if proto == "TCP":
        assert (p.sport, p.flag_names) == (port, "RA")
    else:
        assert p.proto == (P.ICMPV6 if v6 else P.ICMP)
    assert bpfmaps.tc_stats(lb.maps)["reject"] == before + 1
    assert sum(s.no_backend for s in lb.lb_maps.lb_svc_stats.get(ctypes.c_uint32(rev))) == 1


def test_only_cluster_ip_internal_entries_are_served_from_outside(lb):
    """The INTERNAL entries of NodePorts, externalIPs and LB IPs are the
    pod/node short-circuit: not served to traffic from outside."""
    port = next(_ports)
    for kind in (F.NODE_PORT, F.EXTERNAL_IP, F.LOADBALANCER):
        vip = f"198.51.100.{60 + int(kind).bit_length()}"
        frontend(lb, vip, port, "TCP", [(LOCAL4[0], 8080, True)], kind,
                 scope=L.SCOPE_INTERNAL)
        f = P.build(CLIENT4, vip, "TCP", 40123, port)
        assert ingress(lb, f) == (OK, f)


def test_external_scope_wins_over_a_cluster_ip_entry(lb):
    """An address with both (an externalIP equal to a ClusterIP): the
    EXTERNAL entry decides, as before."""
    port = next(_ports)
    frontend(lb, CIP4, port, "TCP", [(LOCAL4[0], 8080, True)], F.CLUSTER_IP,
             scope=L.SCOPE_INTERNAL)
    frontend(lb, CIP4, port, "TCP", [(LOCAL4[1], 8080, True)], F.EXTERNAL_IP | F.MASQUERADE)
    _, out = ingress(lb, P.build(CLIENT4, CIP4, "TCP", 40124, port))
    assert parsed(out).dst == LOCAL4[1]
    assert parsed(egress(lb, out)[1]).src == NODE4


def test_pod_side_never_serves_a_cluster_ip(lb):
    port = next(_ports)
    frontend(lb, CIP4, port, "TCP", [(LOCAL4[0], 8080, True)], F.CLUSTER_IP,
             scope=L.SCOPE_INTERNAL)
    f = P.build(LOCAL4[2], CIP4, "TCP", 40125, port)
    for prog in ("lb_pod_ingress", "lb_egress"):
        assert run(lb, prog, f) == (OK, f)


def test_cluster_ip_affinity_uses_the_internal_membership(lb):
    """Session affinity from outside: keyed by client address, followed only
    while lb_aff_match (scope INTERNAL, as the socket path writes it) holds."""
    port = next(_ports)
    rev = frontend(lb, CIP4, port, "TCP", [(b, 8080, True) for b in LOCAL4],
                   F.CLUSTER_IP | F.AFFINITY, scope=L.SCOPE_INTERNAL)
    m = lb.lb_maps.lb4_services
    key = L.service_key(CIP4, port, "TCP", scope=L.SCOPE_INTERNAL)
    master = m.get(key)
    master.affinity_timeout = 600
    m.set(key, master)
    for slot in range(1, 4):
        bid = m.get(L.service_key(CIP4, port, "TCP", slot=slot,
                                  scope=L.SCOPE_INTERNAL)).backend_id
        lb.lb_maps.lb_aff_match.set(
            L.LbAffinityMatchKey(backend_id=bid, rev_nat_id=rev, scope=L.SCOPE_INTERNAL),
            ctypes.c_uint8(1))
    dsts = {parsed(ingress(lb, P.build("203.0.113.9", CIP4, "TCP", c, port))[1]).dst
            for c in range(45000, 45030)}
    assert len(dsts) == 1 and dsts <= set(LOCAL4)


# ---------------------------------------------------------------------------
# Direct Server Return (lb_node_config LB_CFG_F_DSR_*): remote backends of
# EXTERNAL frontends get the flow unmasqueraded with the frontend in a DSR
# option; the backend's node sends the reply with the frontend as source.

OTHER_NODE4, OTHER_NODE6 = "192.168.50.11", "fd00:50::11"


@pytest.fixture
def lb_mode(lb):
    """Set the node's lb mode for one test, SNAT again after."""
    from pyagent.dataplanes.ebpf import tc

    def set_mode(mode: str) -> None:
        tc.write_node_config(lb.maps, snat_ip4=NODE4, snat_ip6=NODE6, lb_mode=mode)

    try:
        yield set_mode
    finally:
        set_mode("snat")


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_dsr_sends_remote_flows_with_the_frontend_in_an_option(lb, lb_mode, v6, proto):
    lb_mode("dsr")
    node, client, _, remote = fam(v6)
    port = next(_ports)
    frontend(lb, node, port, proto, [(remote[0], 9090, False)], F.NODE_PORT | F.MASQUERADE)

    ret, out = ingress(lb, P.build(client, node, proto, 40301, port, b"syn"))
    assert ret == OK
    p = parsed(out)  # every checksum right after the option went in
    assert (p.src, p.sport, p.dst, p.dport) == (client, 40301, remote[0], 9090)
    assert p.dsr == (node, port) and p.payload == b"syn"
    # The rest of the flow: TCP carries the option only on (retransmitted) SYNs.
    _, out = ingress(lb, P.build(client, node, proto, 40301, port, b"ack", flags="A"))
    p = parsed(out)
    assert (p.dst, p.dsr) == (remote[0], None if proto == "TCP" else (node, port))
    _, out = ingress(lb, P.build(client, node, proto, 40301, port, b"syn"))
    assert parsed(out).dsr == (node, port)
    # No entry here for the reply (it never comes through this node), and
    # nothing masqueraded on the way out.
    reply = P.build(remote[0], client, proto, 9090, 40301, b"r", flags="SA")
    assert egress(lb, reply) == (OK, reply)
    _, out = ingress(lb, P.build(client, node, proto, 40301, port, b"syn"))
    assert egress(lb, out) == (OK, out)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_hybrid_is_dsr_for_tcp_and_snat_for_udp(lb, lb_mode, v6):
    lb_mode("hybrid")
    node, client, _, remote = fam(v6)
    port = next(_ports)
    for proto in ("TCP", "UDP"):
        frontend(lb, node, port, proto, [(remote[0], 9090, False)], F.NODE_PORT | F.MASQUERADE)
        _, out = ingress(lb, P.build(client, node, proto, 40302, port))
        _, out = egress(lb, out)
        p = parsed(out)
        if proto == "TCP":
            assert (p.src, p.dsr) == (client, (node, port))
        else:
            assert (p.src, p.dsr) == (node, None)


def test_dsr_leaves_local_backends_and_cluster_ips_alone(lb, lb_mode):
    lb_mode("dsr")
    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [(LOCAL4[0], 8080, True)], F.NODE_PORT | F.MASQUERADE)
    _, out = egress(lb, ingress(lb, P.build(CLIENT4, NODE4, "TCP", 40303, port))[1])
    assert (parsed(out).src, parsed(out).dsr) == (NODE4, None)  # eTP=Cluster: masqueraded
    frontend(lb, CIP4, port, "TCP", [(REMOTE4[0], 8080, False)], F.CLUSTER_IP,
             scope=L.SCOPE_INTERNAL)
    _, out = ingress(lb, P.build(CLIENT4, CIP4, "TCP", 40304, port))
    assert (parsed(out).dst, parsed(out).dsr) == (REMOTE4[0], None)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_backend_node_answers_with_the_frontend_it_was_told(lb, v6, proto):
    """This node as the backend's: a packet another LB sent by DSR passes
    untouched, and the reply to it leaves with the frontend as source, when
    the frontend is one this node serves too (an LB IP here; another node's
    NodePort as this node's NodePort on the same port); forged ones do not."""
    node, client, local, _ = fam(v6)
    other = OTHER_NODE6 if v6 else OTHER_NODE4
    lb_ip = "fd00:99::9" if v6 else "198.51.100.9"
    lb_port, np_port, forged = next(_ports), next(_ports), next(_ports)
    frontend(lb, lb_ip, lb_port, proto, [(local[0], 8080, True)], F.LOADBALANCER)
    frontend(lb, node, np_port, proto, [(local[0], 8080, True)], F.NODE_PORT)
    before = bpfmaps.tc_stats(lb.maps)["dsr_backend"]
    for i, (fe, port, served) in enumerate([(lb_ip, lb_port, True), (other, np_port, True),
                                            (other, forged, False), (lb_ip, forged, False)]):
        cport = 40310 + i
        f = P.build(client, local[0], proto, cport, 8080, b"q", dsr=(fe, port))
        assert ingress(lb, f) == (OK, f)
        reply = P.build(local[0], client, proto, 8080, cport, b"a", flags="SA")
        ret, out = egress(lb, reply)
        p = parsed(out)
        want = (fe, port) if served else (local[0], 8080)
        assert (ret, (p.src, p.sport), p.dst) == (OK, want, client), (fe, port)
    assert bpfmaps.tc_stats(lb.maps)["dsr_backend"] - before == 2


# ---------------------------------------------------------------------------
# XDP: which packets lb_xdp_ingress finishes itself. Every fixture above
# already checks that XDP + TC behave exactly as TC alone.


def _xdp_run(lb, frame: bytes) -> tuple[int, bytes, bool]:
    """(XDP verdict, frame, finished at XDP) of one frame."""
    from pyagent.dataplanes.ebpf import tc

    done = bpfmaps.tc_stats(lb.maps)["xdp_done"]
    handed = bpfmaps.tc_stats(lb.maps)["xdp_to_tc"]
    ret, out = tc.test_xdp_packet(lb.prog_fds[tc.PROG_XDP], frame)
    stats = bpfmaps.tc_stats(lb.maps)
    finished = stats["xdp_done"] - done
    assert finished + stats["xdp_to_tc"] - handed == 1  # one or the other, always
    return ret, out, bool(finished)


@pytest.mark.parametrize("lb", ["xdp"], indirect=True)
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_xdp_finishes_the_common_shapes(lb, v6, proto):
    from pyagent.dataplanes.ebpf import tc

    node, client, local, remote = fam(v6)
    port, masq_port = next(_ports), next(_ports)
    frontend(lb, node, port, proto, [(local[0], 8080, True)], F.NODE_PORT | F.LOCAL_ETP)
    new = bpfmaps.tc_stats(lb.maps)["new"]
    # a new flow and a later packet of it
    for flags in ("S", "A"):
        ret, out, finished = _xdp_run(lb, P.build(client, node, proto, 40401, port, b"x",
                                                  flags=flags))
        p = parsed(out)
        assert (ret, finished, p.dst, p.dport) == (tc.XDP_PASS, True, local[0], 8080)
    assert bpfmaps.tc_stats(lb.maps)["new"] == new + 1
    # a masqueraded flow's reply from a remote backend, back to the client
    frontend(lb, node, masq_port, proto, [(remote[0], 9090, False)], F.NODE_PORT)
    _, fwd, _ = _xdp_run(lb, P.build(client, node, proto, 40402, masq_port))
    _, fwd = egress(lb, fwd)
    f = parsed(fwd)
    ret, out, finished = _xdp_run(lb, P.build(remote[0], f.src, proto, 9090, f.sport,
                                              flags="SA"))
    assert (ret, finished, parsed(out).dst, parsed(out).dport) == (tc.XDP_PASS, True, client,
                                                                   40402)
    # traffic to no frontend: looked at once, by XDP
    stray = P.build(client, node, proto, 40403, 22)
    assert _xdp_run(lb, stray) == (tc.XDP_PASS, stray, True)


@pytest.mark.parametrize("lb", ["xdp"], indirect=True)
def test_xdp_drops_what_policy_drops(lb):
    from pyagent.dataplanes.ebpf import tc

    port = next(_ports)
    frontend(lb, NODE4, port, "TCP", [], F.NODE_PORT | F.DROP_NO_BACKEND)
    ret, _, finished = _xdp_run(lb, P.build(CLIENT4, NODE4, "TCP", 40410, port))
    assert (ret, finished) == (tc.XDP_DROP, True)


@pytest.mark.parametrize("lb", ["xdp"], indirect=True)
def test_xdp_hands_what_it_cannot_do_to_tc_untouched(lb, lb_mode):
    from pyagent.dataplanes.ebpf import tc

    reject_port, dsr_port, port = next(_ports), next(_ports), next(_ports)
    frontend(lb, NODE4, reject_port, "TCP", [], F.NODE_PORT)
    frontend(lb, NODE4, dsr_port, "TCP", [(REMOTE4[0], 9090, False)], F.NODE_PORT)
    frontend(lb, NODE4, port, "UDP", [(LOCAL4[0], 8080, True)], F.NODE_PORT)
    tracked = P.build(CLIENT4, NODE4, "UDP", 40420, port)
    _, fwd, _ = _xdp_run(lb, tracked)
    cases = {
        "REJECT answer": P.build(CLIENT4, NODE4, "TCP", 40421, reject_port),
        "fragment": P.build(CLIENT4, NODE4, "UDP", 40420, port, more_fragments=True),
        "ICMP error": P.icmp_error(LOCAL4[0], CLIENT4, fwd),
        "DSR option in": P.build(CLIENT4, LOCAL4[0], "TCP", 40422, 8080,
                                 dsr=("198.51.100.9", 80)),
    }
    for what, frame in cases.items():
        assert _xdp_run(lb, frame) == (tc.XDP_PASS, frame, False), what
    lb_mode("dsr")
    syn = P.build(CLIENT4, NODE4, "TCP", 40423, dsr_port)
    assert _xdp_run(lb, syn) == (tc.XDP_PASS, syn, False), "DSR option out"
    _, out = ingress(lb, syn)
    assert parsed(out).dsr == (NODE4, dsr_port)
    # the handshake's later segments carry no option: XDP's again
    ret, out, finished = _xdp_run(lb, P.build(CLIENT4, NODE4, "TCP", 40423, dsr_port,
                                              flags="A"))
    assert (ret, finished, parsed(out).dst, parsed(out).dsr) == (tc.XDP_PASS, True,
                                                                 REMOTE4[0], None)
