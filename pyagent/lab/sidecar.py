"""A minimal service-mesh sidecar for lab pods: outbound TCP connections
that the pod's nftables redirect to --port arrive here; it records the
destination the application asked for (SO_ORIGINAL_DST, as Envoy reads it),
dials it itself with a mark the redirect skips, and relays the upstream's
first line (the lab identity server's answer) back. One JSON line per
connection on stdout: {"original": [address, port], "error": ...}.

This is the case the socket LB's scope exists for: if connect() was
already rewritten to a backend, the sidecar sees a backend, not the VIP.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
MARK = 0x1  # the redirect rule returns early for this mark (see nft_rules)


def nft_rules(vips: list[str], port: int, sidecar_port: int) -> str:
    """An nft script redirecting the pod's TCP connections to vips:port."""
    lines = ["table inet pyagent_lab_mesh {",
             "  chain out {",
             "    type nat hook output priority -100; policy accept;",
             f"    meta mark {MARK:#x} return"]
    for vip in vips:
        fam = "ip6" if ":" in vip else "ip"
        lines.append(f"    {fam} daddr {vip} tcp dport {port} redirect to :{sidecar_port}")
    return "\n".join([*lines, "  }", "}", ""])


def original_dst(conn: socket.socket) -> tuple[str, int]:
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack_from("!2xH4s", raw)
    else:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, addr = struct.unpack_from("!2xH4x16s", raw)
    return str(ipaddress.ip_address(addr)), port


def handle(conn: socket.socket, lock: threading.Lock) -> None:
    record: dict = {}
    with conn:
        try:
            dst = original_dst(conn)
            record["original"] = list(dst)
            with socket.socket(conn.family, socket.SOCK_STREAM) as up:
                up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
                up.settimeout(5)
                up.connect(dst)
                conn.sendall(up.makefile("rb").readline())
        except OSError as exc:
            record["error"] = str(exc)
    with lock:
        print(json.dumps(record), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=15001)
    args = ap.parse_args()
    lock = threading.Lock()
    listeners = []
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, args.port))
        s.listen(128)
        listeners.append(s)

    def accept(s: socket.socket) -> None:
        while True:
            conn, _ = s.accept()
            threading.Thread(target=handle, args=(conn, lock), daemon=True).start()

    for s in listeners[1:]:
        threading.Thread(target=accept, args=(s,), daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    accept(listeners[0])


if __name__ == "__main__":
    main()
