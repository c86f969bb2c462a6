"""What a removed UDP backend leaves behind in the kernel, and its removal.

A connected UDP socket was rewritten to its backend once, at connect():
when that backend goes, the socket would keep sending into the void (DNS
clients hang until their timeout). Like Cilium, we destroy such sockets
(SOCK_DESTROY through `ss -K`, in every network namespace), so the
application sees ECONNABORTED at once and reconnects through the VIP. The
socket rev-NAT entries of removed backends go as well.

Runs off the sync path, in a background thread: it walks namespaces and a
large LRU map, and nothing in a sync waits for it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Iterable
from typing import Any

from pyagent.dataplanes.ebpf.frontends import Backend
from pyagent.dataplanes.ebpf.programs import LBMaps
from pyagent.model import join_host_port

log = logging.getLogger(__name__)
UDP = 17


def network_namespaces() -> list[str]:
    """One /proc/PID/ns/net path per distinct network namespace we can see."""
    seen: dict[int, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = f"/proc/{pid}/ns/net"
        try:
            seen.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue
    return list(seen.values())


def destroy_udp_sockets(backends: Iterable[Backend]) -> int:
    """SOCK_DESTROY every UDP socket connected to one of `backends`, in every
    network namespace; returns how many namespaces were searched."""
    dsts = [f"dst {join_host_port(b.ip, b.port)}" for b in backends if b.proto == UDP]
    if not dsts:
        return 0
    expr = ["("] + " or ".join(dsts).split() + [")"]
    namespaces = network_namespaces()
    for ns in namespaces:
        res = subprocess.run(["nsenter", f"--net={ns}", "ss", "-K", "-u", "-n", *expr],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            log.debug("ss -K in %s: %s", ns, res.stderr.strip())
    return len(namespaces)


def purge_socket_revnat(maps: LBMaps, backends: Iterable[Backend]) -> int:
    """Delete socket rev-NAT entries that point at removed backends."""
    from pyagent.dataplanes.ebpf import layout as L

    gone = {(b.ip, b.port) for b in backends}
    n = 0
    for m, to_ip in ((maps.lb4_sockrev, L.from_ip4), (maps.lb6_sockrev, L.from_ip6)):
        stale = [k for k, _ in m.items() if (to_ip(k.address), L.from_be16(k.port)) in gone]
        n += m.delete_many(stale)
    return n


class BackendJanitor:
    """Serialises clean-ups of removed backends in one background thread."""

    def __init__(self, maps: LBMaps, tc_maps: Any = None) -> None:
        self.maps = maps
        self.tc_maps = tc_maps  # tc.TcMaps when the TC path runs
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def removed(self, backends: list[Backend]) -> None:
        if not backends:
            return
        t = threading.Thread(target=self._run, args=(backends,), name="backend-janitor",
                             daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _run(self, backends: list[Backend]) -> None:
        with self._lock:
            try:
                destroyed_in = destroy_udp_sockets(backends)
                purged = purge_socket_revnat(self.maps, backends)
                if self.tc_maps is not None:
                    from pyagent.dataplanes.ebpf import tc

                    # kube-proxy clears the UDP conntrack of a departed endpoint
                    for b in backends:
                        if b.proto == UDP:
                            purged += tc.delete_flows_to(self.tc_maps, b.ip, b.port, b.proto)
                log.info("removed backends %s: UDP sockets destroyed in %d namespaces, "
                         "%d rev-NAT/conntrack entries purged",
                         ",".join(join_host_port(b.ip, b.port) for b in backends),
                         destroyed_in, purged)
            except Exception:  # never let a clean-up take the agent down
                log.exception("cleaning up removed backends failed")

    def wait(self, timeout: float = 30) -> None:
        for t in self._threads:
            t.join(timeout)
