"""Identity server for lab pods: answers every TCP connection and UDP datagram
with one JSON line naming the pod and the peer it saw (so tests can check
source-IP preservation). Listens dual-stack on `::`."""

from __future__ import annotations

import argparse
import json
import socket
import threading


def _reply(name: str, peer: tuple, local: tuple) -> bytes:
    return (json.dumps({"pod": name, "peer": peer[0], "local": local[0], "port": local[1]})
            + "\n").encode()


def _dual_stack(kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s


def _plain(addr: str) -> str:
    return addr.removeprefix("::ffff:")


def serve_tcp(name: str, port: int) -> None:
    s = _dual_stack(socket.SOCK_STREAM)
    s.bind(("::", port))
    s.listen(512)
    while True:
        conn, peer = s.accept()
        local = conn.getsockname()
        try:
            conn.sendall(_reply(name, (_plain(peer[0]),), (_plain(local[0]), local[1])))
            # Hold the connection until the client closes it, so tests can
            # keep long-lived connections open; the client reads one line.
            threading.Thread(target=_drain, args=(conn,), daemon=True).start()
        except OSError:
            conn.close()


def _drain(conn: socket.socket) -> None:
    with conn:
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass


def serve_udp(name: str, port: int) -> None:
    s = _dual_stack(socket.SOCK_DGRAM)
    s.bind(("::", port))
    while True:
        _, peer = s.recvfrom(4096)
        local = s.getsockname()
        s.sendto(_reply(name, (_plain(peer[0]),), (_plain(local[0]), port)), peer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    args = ap.parse_args()
    threads = [threading.Thread(target=serve_tcp, args=(args.name, p), daemon=True)
               for p in args.tcp]
    threads += [threading.Thread(target=serve_udp, args=(args.name, p), daemon=True)
                for p in args.udp]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
