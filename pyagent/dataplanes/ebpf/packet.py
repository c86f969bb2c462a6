"""Ethernet/IPv4/IPv6 TCP/UDP frames for BPF_PROG_TEST_RUN: a builder with
correct checksums, and a parser that re-checks every checksum of what a
program handed back (including the quoted packet inside ICMP errors).

Pure Python, no root: used by tests and by `pyagent trace --bpf`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
PROTO_NAMES = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP", ICMPV6: "ICMPv6"}
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
IP_DF, IP_MF = 0x4000, 0x2000

# The DSR option (bpf_src/lb_types.h: LB_DSR_OPT4, LB_DSR_OPT6, struct lb_dsr*)
DSR_OPT4, DSR_OPT6 = 0x9E, 0x1E
NEXTHDR_DSTOPTS = 60


def dsr_option4(addr: str, port: int) -> bytes:
    return struct.pack("!BBH4s", DSR_OPT4, 8, port, ipaddress.IPv4Address(addr).packed)


def dsr_header6(nexthdr: int, addr: str, port: int) -> bytes:
    """A destination options header holding the DSR option, then PadN."""
    return struct.pack("!BBBBH16sBB", nexthdr, 2, DSR_OPT6, 18, port,
                       ipaddress.IPv6Address(addr).packed, 1, 0)


CLIENT_MAC = bytes.fromhex("020000000001")
NODE_MAC = bytes.fromhex("020000000002")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def tcp_flags(flags: str | int) -> int:
    if isinstance(flags, int):
        return flags
    return sum(TCP_FLAGS[c] for c in flags.upper())


def build(src: str, dst: str, proto: int | str, sport: int = 0, dport: int = 0,
          payload: bytes = b"", flags: str | int = "S", seq: int = 1000, ack: int = 0,
          ttl: int = 64, udp_checksum: bool = True, frag_offset: int = 0,
          more_fragments: bool = False, src_mac: bytes = CLIENT_MAC,
          dst_mac: bytes = NODE_MAC, tcp_options: bytes = b"",
          dsr: tuple[str, int] | None = None) -> bytes:
    """One Ethernet frame with correct IP and L4 checksums.

    proto is TCP/UDP (number or name). IPv4 fragments are built by setting
    frag_offset (in 8-byte units) / more_fragments; the L4 header is still
    written (tests only need the IP header to say "fragment"). dsr: the
    frontend a DSR option names, as another node's LB would add it."""
    if isinstance(proto, str):
        proto = {"TCP": TCP, "UDP": UDP}[proto.upper()]
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError("source and destination families differ")
    if proto == TCP:
        if len(tcp_options) % 4:
            raise ValueError("TCP options must be a multiple of 4 bytes")
        doff = (20 + len(tcp_options)) // 4
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4,
                         tcp_flags(flags), 65535, 0, 0) + tcp_options + payload
        csum_at = 16
    elif proto == UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        csum_at = 6
    else:
        raise ValueError(f"unsupported protocol {proto}")
    if proto == TCP or udp_checksum or s.version == 6:
        c = checksum(_pseudo(s.packed, d.packed, proto, len(l4)) + l4)
        if proto == UDP and c == 0:
            c = 0xFFFF  # 0 means "no checksum" for UDP
        l4 = l4[:csum_at] + struct.pack("!H", c) + l4[csum_at + 2:]
    if s.version == 4:
        frag = (frag_offset & 0x1FFF) | (IP_MF if more_fragments else 0)
        opts = dsr_option4(*dsr) if dsr else b""
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45 + len(opts) // 4, 0, 20 + len(opts) + len(l4),
                          0x1234, frag, ttl, proto, 0, s.packed, d.packed) + opts
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        ethertype = ETH_P_IP
    else:
        ext = dsr_header6(proto, *dsr) if dsr else b""
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4),
                          NEXTHDR_DSTOPTS if dsr else proto, ttl, s.packed, d.packed) + ext
        ethertype = ETH_P_IPV6
    return dst_mac + src_mac + struct.pack("!H", ethertype) + hdr + l4


def icmp_error(src: str, dst: str, quoted_frame: bytes, quote: int = 28,
               icmp_type: int | None = None, code: int | None = None, ttl: int = 64,
               src_mac: bytes = CLIENT_MAC, dst_mac: bytes = NODE_MAC) -> bytes:
    """An ICMP(v6) error from src to dst quoting the first `quote` bytes of
    the IP packet inside quoted_frame (default: port unreachable)."""
    inner = quoted_frame[14:14 + quote]
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        t, c = (3 if icmp_type is None else icmp_type), (3 if code is None else code)
        msg = struct.pack("!BBHI", t, c, 0, 0) + inner
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(msg), 0, 0, ttl, ICMP, 0,
                          s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + hdr + msg
    t, c = (1 if icmp_type is None else icmp_type), (4 if code is None else code)
    msg = struct.pack("!BBHI", t, c, 0, 0) + inner
    csum = checksum(_pseudo(s.packed, d.packed, ICMPV6, len(msg)) + msg)
    msg = msg[:2] + struct.pack("!H", csum) + msg[4:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(msg), ICMPV6, ttl, s.packed, d.packed)
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + hdr + msg


@dataclass
class Packet:
    """A parsed frame. Checksum problems are listed in `errors` (empty when
    every IP, TCP, UDP and ICMP checksum is right)."""

    dst_mac: bytes = b""
    src_mac: bytes = b""
    family: int = 0
    src: str = ""
    dst: str = ""
    proto: int = 0
    ttl: int = 0
    frag: bool = False
    sport: int = 0
    dport: int = 0
    flags: int = 0  # TCP
    seq: int = 0
    ack: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    payload: bytes = b""
    quoted: Packet | None = None  # the packet an ICMP error quotes
    dsr: tuple[str, int] | None = None  # the frontend a DSR option names
    errors: list[str] = field(default_factory=list)

    @property
    def flag_names(self) -> str:
        return "".join(n for n, bit in TCP_FLAGS.items() if self.flags & bit)

    def describe(self) -> str:
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        if self.proto in (TCP, UDP):
            s, d = hostport(self.src, self.sport), hostport(self.dst, self.dport)
            text = f"{name} {s} -> {d}"
            if self.proto == TCP:
                text += f" [{self.flag_names}] seq={self.seq} ack={self.ack}"
        else:
            text = f"{name} {self.src} -> {self.dst}"
            if self.icmp_type is not None:
                text += f" type={self.icmp_type} code={self.icmp_code}"
            if self.quoted:
                text += f" (about {self.quoted.describe()})"
        if self.errors:
            text += " BAD CHECKSUM: " + ", ".join(self.errors)
        return text


def hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse(frame: bytes, ethernet: bool = True, quoted: bool = False) -> Packet:
    """Parse a frame (or, with ethernet=False, an IP packet). quoted=True
    parses the truncated packet inside an ICMP error: lengths are not
    checked and only the IP header checksum is."""
    p = Packet()
    data = frame
    if ethernet:
        p.dst_mac, p.src_mac = frame[:6], frame[6:12]
        ethertype = struct.unpack("!H", frame[12:14])[0]
        data = frame[14:]
        if ethertype not in (ETH_P_IP, ETH_P_IPV6):
            p.errors.append(f"ethertype {ethertype:#x}")
            return p
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0xF) * 4
        tot_len, frag, ttl, proto = struct.unpack("!H2xHBB", data[2:10])
        if checksum(data[:ihl]) != 0:
            p.errors.append("IPv4 header")
        p.family, p.ttl, p.proto = 4, ttl, proto
        p.frag = bool(frag & 0x3FFF)
        p.src = str(ipaddress.IPv4Address(data[12:16]))
        p.dst = str(ipaddress.IPv4Address(data[16:20]))
        l4 = data[ihl:] if quoted else data[ihl:tot_len]
        src_b, dst_b = data[12:16], data[16:20]
        if ihl == 28 and data[20] == DSR_OPT4 and data[21] == 8:
            port, addr = struct.unpack("!H4s", data[22:28])
            p.dsr = (str(ipaddress.IPv4Address(addr)), port)
    elif version == 6:
        plen, proto, ttl = struct.unpack("!HBB", data[4:8])
        p.family, p.ttl, p.proto = 6, ttl, proto
        p.src = str(ipaddress.IPv6Address(data[8:24]))
        p.dst = str(ipaddress.IPv6Address(data[24:40]))
        l4 = data[40:] if quoted else data[40:40 + plen]
        src_b, dst_b = data[8:24], data[24:40]
        if proto == NEXTHDR_DSTOPTS and len(l4) >= 8:
            size = (l4[1] + 1) * 8
            if l4[1] == 2 and l4[2] == DSR_OPT6 and l4[3] == 18:
                port, addr = struct.unpack("!H16s", l4[4:22])
                p.dsr = (str(ipaddress.IPv6Address(addr)), port)
            p.proto, l4 = l4[0], l4[size:]
    else:
        p.errors.append(f"IP version {version}")
        return p
    if p.frag:
        return p
    _parse_l4(p, l4, src_b, dst_b, quoted)
    return p


def _parse_l4(p: Packet, l4: bytes, src_b: bytes, dst_b: bytes, quoted: bool) -> None:
    if p.proto == TCP and len(l4) >= 8:
        p.sport, p.dport = struct.unpack("!HH", l4[:4])
        if len(l4) >= 20:
            p.seq, p.ack, off, p.flags = struct.unpack("!IIBB", l4[4:14])
            p.payload = l4[(off >> 4) * 4:]
        if not quoted and checksum(_pseudo(src_b, dst_b, TCP, len(l4)) + l4) != 0:
            p.errors.append("TCP")
    elif p.proto == UDP and len(l4) >= 8:
        p.sport, p.dport, _ulen, csum = struct.unpack("!HHHH", l4[:8])
        p.payload = l4[8:]
        # IPv4 UDP may carry no checksum (0); IPv6 UDP must.
        if not quoted and (csum != 0 or p.family == 6) and \
                checksum(_pseudo(src_b, dst_b, UDP, len(l4)) + l4) != 0:
            p.errors.append("UDP")
    elif p.proto in (ICMP, ICMPV6) and len(l4) >= 8:
        p.icmp_type, p.icmp_code = l4[0], l4[1]
        pseudo = b"" if p.proto == ICMP else _pseudo(src_b, dst_b, ICMPV6, len(l4))
        if not quoted and checksum(pseudo + l4) != 0:
            p.errors.append(p.proto == ICMP and "ICMP" or "ICMPv6")
        errors_types = (3, 11, 12) if p.proto == ICMP else (1, 2, 3, 4)
        if p.icmp_type in errors_types and len(l4) > 8:
            p.quoted = parse(l4[8:], ethernet=False, quoted=True)
            p.errors += [f"quoted {e}" for e in p.quoted.errors]
