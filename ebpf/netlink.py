"""Netlink request/reply framing for the socket-module clients (rtnl,
sock_diag): one request, then its replies. <linux/netlink.h>."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


def send(sock: socket.socket, msg_type: int, flags: int, body: bytes, seq: int) -> None:
    sock.send(HEADER.pack(HEADER.size + len(body), msg_type, flags, seq, 0) + body)


def replies(sock: socket.socket, seq: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of the replies to `seq` until DONE, or up to and
    including an NLMSG_ERROR (an error or an ack: the caller reads it)."""
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + HEADER.size <= len(data):
            length, mtype, _flags, mseq, _pid = HEADER.unpack_from(data, off)
            if length < HEADER.size:
                raise OSError("netlink: malformed message")
            payload = data[off + HEADER.size:off + length]
            off += (length + 3) & ~3
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return
            yield mtype, payload
            if mtype == NLMSG_ERROR:
                return
