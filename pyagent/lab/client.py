"""Lab client: opens COUNT connections (TCP) or sockets (UDP) to DST:PORT and
prints one JSON object: which pod answered how often, errors by errno name,
and for each socket what the kernel reported as the peer (getpeername and,
for UDP, recvfrom's source), so tests can check the VIP is what the app sees."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import time
from collections import Counter


def _family(dst: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET


def _err(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "ETIMEDOUT"
    return errno.errorcode.get(exc.errno or 0, str(exc))


def tcp_once(dst: str, port: int, timeout: float) -> dict:
    with socket.socket(_family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((dst, port))
        peer = s.getpeername()[0]
        line = s.makefile().readline()
    reply = json.loads(line)
    return {"pod": reply["pod"], "peer": peer, "seen_client": reply["peer"]}


def udp_socket(dst: str, port: int, timeout: float, messages: int, connected: bool) -> dict:
    with socket.socket(_family(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if connected:
            s.connect((dst, port))
        pods, sources = [], []
        for _ in range(messages):
            if connected:
                s.send(b"hi")
            else:
                s.sendto(b"hi", (dst, port))
            data, src = s.recvfrom(4096)
            pods.append(json.loads(data)["pod"])
            sources.append(src[0])
        peer = s.getpeername()[0] if connected else None
    return {"pod": pods[0], "pods": pods, "from": sources, "peer": peer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--messages", type=int, default=1, help="UDP datagrams per socket")
    ap.add_argument("--connected", action="store_true", help="connect() UDP sockets")
    args = ap.parse_args()

    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    details: list[dict] = []
    started = time.monotonic()
    for _ in range(args.count):
        try:
            if args.proto == "tcp":
                d = tcp_once(args.dst, args.port, args.timeout)
            else:
                d = udp_socket(args.dst, args.port, args.timeout, args.messages, args.connected)
        except OSError as exc:
            errors[_err(exc)] += 1
            continue
        counts[d["pod"]] += 1
        details.append(d)
    print(json.dumps({"counts": counts, "errors": errors, "details": details,
                      "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
