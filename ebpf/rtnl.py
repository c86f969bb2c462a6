"""rtnetlink dumps of this network namespace (links, addresses, default
routes, routes of a table and protocol), with the socket module alone: the
agent reads them at start, where importing pyroute2 (0.1 s of CPU,
everything it has) would come first on the way to the first sync. Message
layouts: <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>,
<linux/if_addr.h>."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ebpf import netlink

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 10, 18, 1
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg


@dataclass(frozen=True)
class RawLink:
    index: int
    name: str
    kind: str  # IFLA_INFO_KIND ("" when none: a physical device)
    master: int | None


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4:offset + length]  # without NESTED/BYTEORDER
        offset += (length + 3) & ~3


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def _dump(msg_type: int, body: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of every message answering one dump request."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "little")
        netlink.send(sock, msg_type, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, body, seq)
        for kind, payload in netlink.replies(sock, seq):
            if kind == netlink.NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0]
                if err:
                    raise OSError(err, f"rtnetlink dump {msg_type}: {os.strerror(err)}")
                return
            yield kind, payload


def links() -> list[RawLink]:
    out = []
    for kind, payload in _dump(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind != RTM_NEWLINK:
            continue
        _, _, index, _, _ = _IFINFO.unpack_from(payload)
        name, link_kind, master = "", "", None
        for attr, value in _attrs(payload, _IFINFO.size, len(payload)):
            if attr == IFLA_IFNAME:
                name = _text(value)
            elif attr == IFLA_MASTER:
                master = struct.unpack_from("=I", value)[0]
            elif attr == IFLA_LINKINFO:
                for sub, sub_value in _attrs(value, 0, len(value)):
                    if sub == IFLA_INFO_KIND:
                        link_kind = _text(sub_value)
        out.append(RawLink(index, name, link_kind, master))
    return out


def addresses() -> list[tuple[int, str]]:
    """(link index, IFA_ADDRESS) of every address, both families."""
    out = []
    for kind, payload in _dump(RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind != RTM_NEWADDR:
            continue
        family, _, _, _, index = _IFADDR.unpack_from(payload)
        for attr, value in _attrs(payload, _IFADDR.size, len(payload)):
            if attr == IFA_ADDRESS and family in (socket.AF_INET, socket.AF_INET6):
                out.append((index, socket.inet_ntop(family, value)))
    return out


def _routes(family: int) -> Iterator[tuple[int, int, dict[int, bytes]]]:
    """(table, routing protocol, attributes) of every route of `family`."""
    for kind, payload in _dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        if kind != RTM_NEWROUTE:
            continue
        _, _, _, _, rtm_table, rtm_protocol, _, _, _ = _RTMSG.unpack_from(payload)
        attrs = dict(_attrs(payload, _RTMSG.size, len(payload)))
        table = attrs.get(RTA_TABLE)  # tables past 255 are only here
        yield (struct.unpack_from("=I", table)[0] if table else rtm_table), rtm_protocol, attrs


def default_route_links(family: int) -> set[int | None]:
    """The RTA_OIF of every route of `family` without a destination (in any
    table; None for one without an RTA_OIF, e.g. multipath)."""
    out: set[int | None] = set()
    for _, _, attrs in _routes(family):
        if RTA_DST in attrs:
            continue
        oif = attrs.get(RTA_OIF)
        out.add(struct.unpack_from("=I", oif)[0] if oif is not None else None)
    return out


def has_route(table: int, protocol: int) -> bool:
    """Whether a route of either family in `table` has routing `protocol`."""
    return any(t == table and p == protocol for t, p, _ in _routes(socket.AF_UNSPEC))


def link_index(name: str) -> int | None:
    """The index of link `name` in this network namespace, or None."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
