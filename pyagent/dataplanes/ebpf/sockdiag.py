"""Connected UDP sockets through NETLINK_SOCK_DIAG: list them (with their
socket cookies) and destroy one exactly (SOCK_DESTROY with its 4-tuple and
cookie: the kernel refuses if the cookie does not match, so a socket that
reused the address meanwhile is never hit). Linux uapi: linux/inet_diag.h,
linux/sock_diag.h; SOCK_DESTROY needs CONFIG_INET_DIAG_DESTROY and
CAP_NET_ADMIN.

A netlink socket belongs to the network namespace it was created in, so
`open_in_netns` creates it in a short-lived thread that joins the target
namespace (setns affects only the calling thread) and dies with it: the
agent's own threads never change namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from dataclasses import dataclass

from ebpf import netlink
from ebpf.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY, SOCK_DESTROY = 20, 21
CLONE_NEWNET = 0x40000000
TCP_ESTABLISHED = 1  # connected UDP sockets report this state

_REQ = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_SOCKID = struct.Struct("!HH16s16s")  # sport, dport (network order), src, dst
_SOCKID_TAIL = struct.Struct("=III")  # ifindex, cookie low, cookie high
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans


@dataclass(frozen=True)
class UdpSocket:
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    ifindex: int
    cookie: int
    raw_id: bytes  # the inet_diag_sockid as the kernel sent it


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_in_netns(netns_path: str | None) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the network namespace of netns_path
    (e.g. /proc/PID/ns/net); None: the caller's own namespace."""
    if netns_path is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    out: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _libc_setns(fd)
            finally:
                os.close(fd)
            out.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG))
        except BaseException as exc:  # handed to the caller
            out.append(exc)

    t = threading.Thread(target=enter, name="sockdiag-netns", daemon=True)
    t.start()
    t.join()
    if not out:
        raise OSError(f"could not open a sock_diag socket in {netns_path}")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def connected_udp(sock: socket.socket, family: int) -> list[UdpSocket]:
    """Every connected UDP socket of `family` in the socket's namespace."""
    seq = 1
    body = _REQ.pack(family, socket.IPPROTO_UDP, 0, 0, 1 << TCP_ESTABLISHED)
    body += bytes(_SOCKID.size + _SOCKID_TAIL.size)
    netlink.send(sock, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, body, seq)
    alen = 4 if family == socket.AF_INET else 16
    out = []
    for mtype, payload in netlink.replies(sock, seq):
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", payload)
            if err:
                raise OSError(-err, f"sock_diag dump: {os.strerror(-err)}")
            continue
        off = _MSG_HEAD.size
        sport, dport, src, dst = _SOCKID.unpack_from(payload, off)
        ifindex, lo, hi = _SOCKID_TAIL.unpack_from(payload, off + _SOCKID.size)
        raw = payload[off:off + _SOCKID.size + _SOCKID_TAIL.size]
        out.append(UdpSocket(family, socket.inet_ntop(family, src[:alen]), sport,
                             socket.inet_ntop(family, dst[:alen]), dport, ifindex,
                             lo | hi << 32, raw))
    return out


def destroy(sock: socket.socket, s: UdpSocket) -> bool:
    """SOCK_DESTROY one socket (the application sees ECONNABORTED). False if
    it is gone or its cookie no longer matches."""
    seq = 2
    body = _REQ.pack(s.family, socket.IPPROTO_UDP, 0, 0, 0xFFFFFFFF) + s.raw_id
    netlink.send(sock, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, body, seq)
    for mtype, payload in netlink.replies(sock, seq):
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", payload)
            if err == 0:
                return True
            if -err in (2, 3):  # ENOENT, ESRCH: gone, or another socket now
                return False
            raise OSError(-err, f"SOCK_DESTROY: {os.strerror(-err)}")
    return False
