"""Lab client: opens COUNT connections (TCP) or sockets (UDP) to DST:PORT and
prints one JSON object: which pod answered how often, errors by errno name,
and for each socket what the kernel reported as the peer (getpeername and,
for UDP, recvfrom's source), so tests can check the VIP is what the app sees."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import socket
import sys
import time
from collections import Counter


def _family(dst: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET


def _err(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "ETIMEDOUT"
    return errno.errorcode.get(exc.errno or 0, str(exc))


SOURCE: str | None = None  # --source: bind every socket to this address first
UNTIL: str | None = None  # --until: stop once this file exists


def _bind(s: socket.socket) -> None:
    if SOURCE:
        s.bind((SOURCE, 0))


def tcp_once(dst: str, port: int, timeout: float) -> dict:
    with socket.socket(_family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        _bind(s)
        s.connect((dst, port))
        peer = s.getpeername()[0]
        line = s.makefile().readline()
    reply = json.loads(line)
    return {"pod": reply["pod"], "peer": peer, "seen_client": reply["peer"]}


def udp_socket(dst: str, port: int, timeout: float, messages: int, connected: bool) -> dict:
    with socket.socket(_family(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        _bind(s)
        if connected:
            s.connect((dst, port))
        pods, sources, seen = [], [], []
        for _ in range(messages):
            if connected:
                s.send(b"hi")
            else:
                s.sendto(b"hi", (dst, port))
            data, src = s.recvfrom(4096)
            reply = json.loads(data)
            pods.append(reply["pod"])
            sources.append(src[0])
            seen.append(reply["peer"])
        peer = s.getpeername()[0] if connected else None
    return {"pod": pods[0], "pods": pods, "from": sources, "peer": peer,
            "seen_client": seen[0]}


def stopped() -> bool:
    """--until FILE exists: the test says the run is over."""
    return bool(UNTIL) and os.path.exists(UNTIL)


def udp_follow(dst: str, port: int, timeout: float, seconds: float) -> list[dict]:
    """A DNS-like client: one connected UDP socket, a query every 20 ms; on
    any error it reconnects through the VIP (as resolvers do)."""
    events: list[dict] = []
    start = time.monotonic()
    s = None
    while time.monotonic() - start < seconds and not stopped():
        try:
            if s is None:
                s = socket.socket(_family(dst), socket.SOCK_DGRAM)
                s.settimeout(timeout)
                _bind(s)
                s.connect((dst, port))
            s.send(b"q")
            pod = json.loads(s.recv(4096))["pod"]
            events.append({"t": time.monotonic() - start, "pod": pod})
        except OSError as exc:
            events.append({"t": time.monotonic() - start, "error": _err(exc)})
            if s is not None:
                s.close()
            s = None
        time.sleep(0.02)
    if s is not None:
        s.close()
    return events


def hold_connections(dst: str, port: int, n: int,
                     timeout: float) -> tuple[list[socket.socket], Counter[str]]:
    held, pods = [], Counter()
    for _ in range(n):
        s = socket.socket(_family(dst), socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((dst, port))
        pods[json.loads(s.makefile().readline())["pod"]] += 1
        held.append(s)
    return held, pods


def still_open(s: socket.socket) -> bool:
    """True if the connection survived: a write succeeds and no RST/FIN is queued."""
    try:
        s.send(b"ping")
        time.sleep(0.01)
        s.setblocking(False)
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--messages", type=int, default=1, help="UDP datagrams per socket")
    ap.add_argument("--connected", action="store_true", help="connect() UDP sockets")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="keep opening connections for this many seconds (COUNT is a cap)")
    ap.add_argument("--hold", type=int, default=0,
                    help="TCP: open this many long-lived connections first, check them at the end")
    ap.add_argument("--linger", type=float, default=0.0,
                    help="keep the held connections this many seconds after the loop")
    ap.add_argument("--source", help="bind to this local address (another client identity)")
    ap.add_argument("--until", help="stop (before --duration) once this file exists")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds between connections (pace the client)")
    ap.add_argument("--follow", type=float, default=0.0,
                    help="UDP: one connected socket queried for this many seconds, "
                         "reconnecting on errors; events in details")
    args = ap.parse_args()
    global SOURCE, UNTIL
    SOURCE, UNTIL = args.source, args.until
    if args.follow:
        events = udp_follow(args.dst, args.port, args.timeout, args.follow)
        print(json.dumps({"counts": Counter(e["pod"] for e in events if "pod" in e),
                          "errors": Counter(e["error"] for e in events if "error" in e),
                          "details": events}))
        return
    held, held_pods = hold_connections(args.dst, args.port, args.hold, args.timeout)
    if args.hold:
        print("held", file=sys.stderr, flush=True)  # lets a test wait for them

    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    details: list[dict] = []
    started = time.monotonic()
    for _ in range(args.count):
        if (args.duration and time.monotonic() - started > args.duration) or stopped():
            break
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
        if args.pause:
            time.sleep(args.pause)
    time.sleep(args.linger)
    broken = sum(1 for s in held if not still_open(s))
    if broken:
        errors["HELD_BROKEN"] += broken
    print(json.dumps({"counts": counts, "errors": errors, "details": details,
                      "seconds": time.monotonic() - started, "held": held_pods}))


if __name__ == "__main__":
    main()
