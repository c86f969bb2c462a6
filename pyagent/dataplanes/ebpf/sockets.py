"""What a removed UDP backend leaves behind in the kernel, and its removal.

A connected UDP socket was rewritten to its backend once, at connect():
when that backend goes, the socket would keep sending into the void (DNS
clients hang until their timeout). Like Cilium, we destroy such sockets
(SOCK_DESTROY), so the application sees ECONNABORTED at once (or
EDESTADDRREQ if it sends before it reads: the socket is disconnected) and
reconnects through the VIP. The socket rev-NAT entries of removed backends go as well.

Only sockets the socket LB translated are touched: the connect() hook
records each one's cookie in the socket rev-NAT map under the backend it
chose, and a socket is destroyed only if its cookie is recorded for the
removed backend and it is still connected to that backend. Only network
namespaces of processes in the agent's cgroup (where the hooks run) are
searched. A socket that reached the same address directly, or any socket
outside the cgroup, is never hit. (A socket whose entry the LRU map evicted
is missed: it then behaves as without the janitor, until its app times out.)

Runs off the sync path, in a background thread: it walks namespaces and a
large LRU map, and nothing in a sync waits for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

from pyagent.core.model import join_host_port
from pyagent.dataplanes.ebpf import sockdiag
from pyagent.dataplanes.ebpf.frontends import Backend
from pyagent.dataplanes.ebpf.socket_lb import LBMaps

log = logging.getLogger(__name__)
UDP = 17


def cgroup_namespaces(cgroup: str) -> list[str]:
    """One /proc/PID/ns/net path per distinct network namespace among the
    processes of `cgroup` and its descendants (the hooks apply to those)."""
    seen: dict[int, str] = {}
    for dirpath, _dirs, _files in os.walk(cgroup):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids = f.read().split()
        except OSError:
            continue  # the cgroup went meanwhile
        for pid in pids:
            path = f"/proc/{pid}/ns/net"
            try:
                seen.setdefault(os.stat(path).st_ino, path)
            except OSError:
                continue
    return list(seen.values())


def translated_cookies(maps: LBMaps, backends: Iterable[Backend]
                       ) -> dict[tuple[str, int], set[int]]:
    """(backend ip, port) -> cookies of the sockets the hooks sent there."""
    from pyagent.dataplanes.ebpf import layout as L

    gone = {(b.ip, b.port) for b in backends if b.proto == UDP}
    out: dict[tuple[str, int], set[int]] = {}
    if not gone:
        return out
    for m, to_ip in ((maps.lb4_sockrev, L.from_ip4), (maps.lb6_sockrev, L.from_ip6)):
        for k, _ in m.items():  # batched: the map is large
            addr = (to_ip(k.address), L.from_be16(k.port))
            if addr in gone:
                out.setdefault(addr, set()).add(k.cookie)
    return out


def destroy_udp_sockets(cookies: dict[tuple[str, int], set[int]], namespaces: list[str]
                        ) -> int:
    """SOCK_DESTROY the connected UDP sockets whose cookie `cookies` records
    for the backend they are connected to, in `namespaces`. Returns how many."""
    if not cookies:
        return 0
    n = 0
    for ns in namespaces:
        try:
            sock = sockdiag.open_in_netns(ns)
        except OSError as exc:  # the process went meanwhile
            log.debug("sock_diag in %s: %s", ns, exc)
            continue
        with sock:
            for fam in (socket.AF_INET, socket.AF_INET6):
                for s in sockdiag.connected_udp(sock, fam):
                    if s.cookie in cookies.get((s.dst, s.dport), ()):
                        n += sockdiag.destroy(sock, s)
    return n


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
    """Clean-ups of removed backends in one background thread at a time.

    Removals that arrive while a clean-up runs wait together and go in the
    next pass, which walks the namespaces and maps once for all of them: a
    rolling update removing hundreds of backends costs a few passes, never a
    thread (and a map walk) per sync."""

    def __init__(self, maps: LBMaps, tc_maps: Any = None, cgroup: str = "/") -> None:
        self.maps = maps
        self.tc_maps = tc_maps  # tc.TcMaps when the TC path runs
        self.cgroup = str(cgroup)  # where the socket hooks are attached
        self._cond = threading.Condition()
        self._pending: list[Backend] = []
        self._worker: threading.Thread | None = None  # set while a pass may run

    def removed(self, backends: list[Backend]) -> None:
        if not backends:
            return
        with self._cond:
            self._pending.extend(backends)
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, name="backend-janitor",
                                                daemon=True)
                self._worker.start()

    def _drain(self) -> None:
        while True:
            with self._cond:
                batch, self._pending = self._pending, []
                if not batch:
                    self._worker = None
                    self._cond.notify_all()
                    return
            self._run(batch)

    def _run(self, backends: list[Backend]) -> None:
        try:
            cookies = translated_cookies(self.maps, backends)
            destroyed = destroy_udp_sockets(
                cookies, cgroup_namespaces(self.cgroup) if cookies else [])
            purged = purge_socket_revnat(self.maps, backends)
            if self.tc_maps is not None:
                from pyagent.dataplanes.ebpf import tc

                # kube-proxy clears the UDP conntrack of a departed endpoint
                purged += tc.delete_flows_of(self.tc_maps, [(b.ip, b.port, b.proto)
                                                            for b in backends if b.proto == UDP])
            log.info("removed backends %s: %d connected UDP sockets destroyed, "
                     "%d rev-NAT/conntrack entries purged",
                     ",".join(join_host_port(b.ip, b.port) for b in backends),
                     destroyed, purged)
        except Exception:  # never let a clean-up take the agent down
            log.exception("cleaning up removed backends failed")

    def wait(self, timeout: float = 30) -> None:
        """Until every removal so far is cleaned up (or timeout seconds)."""
        with self._cond:
            self._cond.wait_for(lambda: self._worker is None, timeout)
