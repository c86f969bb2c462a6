"""The socket load balancer on the running kernel.

Everything runs in objects this module creates and removes: a child cgroup
under the cgroup2 mount, a network namespace whose `lo` carries the backend
addresses, and a private bpffs in a temp dir. Clients join the cgroup before
they enter the namespace (`ip netns exec` remounts /sys). Addresses come from
the documentation ranges and exist only inside that namespace.

Run as a script, this file is also the backend server and the client.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import time

import bpfmaps
import pytest

PREFIX = "pysk"  # every netns, cgroup and temp dir of this module
BACKENDS4 = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
BACKENDS6 = ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
VIP4, VIP6 = "198.51.100.10", "2001:db8:1::10"
TCP_PORT, UDP_PORT = 8080, 5353  # backends listen here
HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------------------
# server and client (run inside the namespace as `python this_file ROLE JSON`)


def serve(addrs: list[str]) -> None:
    """TCP: send "addr" and close. UDP: answer every datagram with "addr"."""
    sel = selectors.DefaultSelector()
    for addr in addrs:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, TCP_PORT))
        t.listen(512)
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind((addr, UDP_PORT))
        sel.register(t, selectors.EVENT_READ, ("tcp", addr))
        sel.register(u, selectors.EVENT_READ, ("udp", addr))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            kind, addr = key.data
            if kind == "tcp":
                conn, _peer = key.fileobj.accept()
                with conn:
                    conn.sendall(addr.encode())
            else:
                _data, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(addr.encode(), peer)


def _sock(dst: str, kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, kind)
    s.settimeout(3)
    return s


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e))


def client_op(op: dict) -> dict:
    dst, port = op["dst"], op["port"]
    if op["op"] == "tcp":
        ids, peers, errors = [], [], {}
        for _ in range(op["n"]):
            try:
                with _sock(dst, socket.SOCK_STREAM) as s:
                    s.connect((dst, port))
                    peers.append(list(s.getpeername()[:2]))
                    ids.append(s.recv(100).decode())
            except OSError as e:
                errors[_errname(e)] = errors.get(_errname(e), 0) + 1
        return {"ids": ids, "peers": peers, "errors": errors}
    if op["op"] == "udp":
        sockets = []
        for _ in range(op["sockets"]):
            with _sock(dst, socket.SOCK_DGRAM) as s:
                got = {"ids": [], "froms": [], "peer": None}
                if op.get("connect"):
                    s.connect((dst, port))
                    got["peer"] = list(s.getpeername()[:2])
                for _ in range(op["sends"]):
                    if op.get("connect"):
                        s.send(b"x")
                    else:
                        s.sendto(b"x", (dst, port))
                    data, frm = s.recvfrom(100)
                    got["ids"].append(data.decode())
                    got["froms"].append(list(frm[:2]))
                sockets.append(got)
        return {"sockets": sockets}
    if op["op"] == "errno":
        start = time.monotonic()
        kind = socket.SOCK_STREAM if op["proto"] == "tcp" else socket.SOCK_DGRAM
        try:
            with _sock(dst, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.connect((dst, port))
                else:
                    s.sendto(b"x", (dst, port))
            err = None
        except OSError as e:
            err = _errname(e)
        return {"errno": err, "seconds": time.monotonic() - start}
    if op["op"] == "udp_hold":
        # Connected UDP socket: peer name, wait for the parent, peer name again.
        with _sock(dst, socket.SOCK_DGRAM) as s:
            s.connect((dst, port))
            print(json.dumps(list(s.getpeername()[:2])), flush=True)
            sys.stdin.readline()
            return {"peer": list(s.getpeername()[:2])}
    raise ValueError(op)


# ---------------------------------------------------------------------------
# environment: cgroup, netns, bpffs, servers, loaded + attached programs


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _stale(name: str) -> bool:
    """name is PREFIX-<pid>-<hex> of a test process that no longer runs."""
    parts = name.split("-")
    if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
        return False
    return not os.path.exists(f"/proc/{parts[1]}")


def sweep_stale() -> None:
    """Remove what a crashed earlier run of this module left behind (only
    objects of dead test processes: concurrent runs keep theirs)."""
    from ebpf import bpffs, cgroup

    for ns in sh("ip", "netns", "list").split():
        if _stale(ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    with open("/proc/mounts") as f:
        mounts = f.read().splitlines()
    for line in mounts:
        mnt, fstype = line.split()[1:3]
        if fstype == "bpf" and _stale(os.path.basename(os.path.dirname(mnt))):
            with contextlib.suppress(OSError):
                bpffs.umount(mnt)  # links pinned there go with it
    root = cgroup.cgroup2_mount()
    for name in os.listdir(root):
        if _stale(name):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))


class Env:
    """One test cgroup + netns + bpffs; close() removes all of it."""

    def __init__(self) -> None:
        from ebpf import bpffs, cgroup

        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.ns = self.tag
        self.cgroup = os.path.join(cgroup.cgroup2_mount(), self.tag)
        self.tmp = tempfile.mkdtemp(prefix=self.tag + "-")
        self.bpffs = os.path.join(self.tmp, "bpffs")
        self.server: subprocess.Popen | None = None
        self.lb = None
        self._mounted = False
        try:
            os.mkdir(self.cgroup)
            assert not cgroup.is_root_cgroup(self.cgroup)
            bpffs.mount(self.bpffs)
            self._mounted = True
            sh("ip", "netns", "add", self.ns)
            sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            for a in BACKENDS4:
                sh("ip", "-n", self.ns, "addr", "add", f"{a}/32", "dev", "lo")
            for a in BACKENDS6:
                sh("ip", "-n", self.ns, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        except BaseException:
            self.close()
            raise

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, HERE, "server",
             json.dumps(BACKENDS4 + BACKENDS6)],
            stdout=subprocess.PIPE, text=True)
        assert self.server.stdout.readline().strip() == "ready"

    def _join(self) -> None:  # preexec_fn: runs in the child before exec
        with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    def client_argv(self, ops: list[dict]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, HERE, "client", json.dumps(ops)]

    def client(self, *ops: dict) -> list[dict]:
        """Run ops in one client process inside the cgroup and namespace."""
        r = subprocess.run(self.client_argv(list(ops)), preexec_fn=self._join,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def close(self) -> None:
        from ebpf import bpffs
        from pyagent.dataplanes.ebpf import socket_lb

        errors = []

        def attempt(fn, *args):
            try:
                fn(*args)
            except Exception as e:  # keep tearing down; report at the end
                errors.append(e)

        if self.lb is not None:
            attempt(self.lb.close)
        if self._mounted:
            attempt(socket_lb.cleanup, self.bpffs)
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "netns", "delete", self.ns], capture_output=True)
        if self._mounted:
            attempt(bpffs.umount, self.bpffs)
        if os.path.isdir(self.cgroup):
            attempt(os.rmdir, self.cgroup)
        attempt(lambda: os.rmdir(self.bpffs) if os.path.isdir(self.bpffs) else None)
        attempt(os.rmdir, self.tmp)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def env():
    from pyagent.dataplanes.ebpf import socket_lb

    sweep_stale()
    e = Env()
    try:
        e.start_server()
        # per-service arrays past 2^16: frontend ids above 16 bits are tested
        e.lb = socket_lb.load(e.bpffs, socket_lb.Capacities(1024, 1024, 1024, 1024, 64, 1 << 17))
        socket_lb.attach(e.lb, e.bpffs, e.cgroup)
        yield e
    finally:
        e.close()


# ---------------------------------------------------------------------------
# map programming through layout + maps (the real control plane is elsewhere)

_next_backend_id = [100]


def put_service(maps, vip: str, port: int, proto: str, backends: list[tuple[str, int]],
                rev_id: int, flags: int = 0) -> list[int]:
    """Backends, then slots, then the master entry (make-before-break)."""
    from pyagent.dataplanes.ebpf import layout as L

    v6 = ":" in vip
    bmap = maps.lb6_backends if v6 else maps.lb4_backends
    smap = maps.lb6_services if v6 else maps.lb4_services
    start = _next_backend_id[0]
    _next_backend_id[0] += len(backends)
    ids = list(range(start + 1, start + 1 + len(backends)))
    bmap.update_many((ctypes.c_uint32(i), L.backend_value(a, p, proto))
                     for i, (a, p) in zip(ids, backends, strict=True))
    smap.update_many((L.service_key(vip, port, proto, slot=s), L.LbService(backend_id=i))
                     for s, i in enumerate(ids, 1))
    smap.set(L.service_key(vip, port, proto),
             L.LbService(count=len(ids), rev_nat_id=rev_id, flags=flags))
    (maps.lb6_revnat if v6 else maps.lb4_revnat).set(ctypes.c_uint32(rev_id),
                                                     bpfmaps.revnat_value(vip, port))
    return ids


def del_service(maps, vip: str, port: int, proto: str, nslots: int) -> None:
    from pyagent.dataplanes.ebpf import layout as L

    smap = maps.lb6_services if ":" in vip else maps.lb4_services
    smap.delete_many(L.service_key(vip, port, proto, slot=s) for s in range(nslots + 1))


def tcp(dst: str, port: int, n: int, peer: bool = True) -> dict:
    return {"op": "tcp", "dst": dst, "port": port, "n": n, "peer": peer}


# ---------------------------------------------------------------------------
# tests


@pytest.mark.root
@pytest.mark.parametrize("vip,backends", [(VIP4, BACKENDS4), (VIP6, BACKENDS6)])
def test_tcp_spreads_over_every_backend_and_only_them(env, vip, backends):
    from pyagent.dataplanes.ebpf import layout as L

    rev = 11 if ":" not in vip else 12
    put_service(env.lb.maps, vip, 80, "TCP", [(b, TCP_PORT) for b in backends], rev)
    try:
        (r,) = env.client(tcp(vip, 80, 300))
    finally:
        del_service(env.lb.maps, vip, 80, "TCP", 3)
    assert r["errors"] == {}
    assert len(r["ids"]) == 300 and set(r["ids"]) == set(backends)
    assert min(r["ids"].count(b) for b in backends) > 30  # roughly uniform
    # getpeername() reports the VIP, not the backend.
    assert {tuple(p) for p in r["peers"]} == {(vip, 80)}
    stats = env.lb.maps.lb_svc_stats.get(ctypes.c_uint32(rev))
    assert sum(s.selected for s in stats) >= 300
    assert L.to_dict(stats[0])["errors"] == 0


@pytest.mark.root
@pytest.mark.parametrize("vip,backends", [(VIP4, BACKENDS4), (VIP6, BACKENDS6)])
def test_udp_socket_sticks_to_one_backend_and_sees_the_vip(env, vip, backends):
    put_service(env.lb.maps, vip, 53, "UDP", [(b, UDP_PORT) for b in backends], 21)
    try:
        unconnected, connected = env.client(
            {"op": "udp", "dst": vip, "port": 53, "sockets": 9, "sends": 4},
            {"op": "udp", "dst": vip, "port": 53, "sockets": 3, "sends": 3, "connect": True},
        )
    finally:
        del_service(env.lb.maps, vip, 53, "UDP", 3)
    seen = set()
    for s in unconnected["sockets"] + connected["sockets"]:
        assert len(set(s["ids"])) == 1, s  # one socket, one backend
        seen.add(s["ids"][0])
        # recvfrom() reports the VIP the datagram was sent to.
        assert {tuple(f) for f in s["froms"]} == {(vip, 53)}
    for s in connected["sockets"]:
        assert tuple(s["peer"]) == (vip, 53)
    assert seen <= set(backends) and len(seen) >= 2  # sockets spread out


@pytest.mark.root
@pytest.mark.parametrize("vip,backends", [(VIP4, BACKENDS4), (VIP6, BACKENDS6)])
def test_frontend_ids_beyond_16_bits(env, vip, backends):
    """A frontend whose rev-NAT id needs more than 16 bits (a node with over
    65,535 Service ports): getpeername() and recvfrom() still report its VIP
    and its counters count, not those of the frontend whose id is the same
    modulo 2^16 (a decoy with another VIP)."""
    v6 = ":" in vip
    rev = 0x10000 + (41 if v6 else 32)
    decoy = "2001:db8:1::99" if v6 else "198.51.100.99"
    put_service(env.lb.maps, decoy, 80, "TCP", [(backends[0], TCP_PORT)], rev & 0xFFFF)
    put_service(env.lb.maps, vip, 80, "TCP", [(b, TCP_PORT) for b in backends], rev)
    put_service(env.lb.maps, vip, 53, "UDP", [(b, UDP_PORT) for b in backends], rev + 1)
    try:
        r, udp = env.client(tcp(vip, 80, 60),
                            {"op": "udp", "dst": vip, "port": 53, "sockets": 3, "sends": 2,
                             "connect": True})
    finally:
        del_service(env.lb.maps, vip, 80, "TCP", 3)
        del_service(env.lb.maps, vip, 53, "UDP", 3)
        del_service(env.lb.maps, decoy, 80, "TCP", 1)
    assert r["errors"] == {} and set(r["ids"]) == set(backends)
    assert {tuple(p) for p in r["peers"]} == {(vip, 80)}
    for s in udp["sockets"]:
        assert tuple(s["peer"]) == (vip, 53)
        assert {tuple(f) for f in s["froms"]} == {(vip, 53)}
    stats = env.lb.maps.lb_svc_stats

    def selected(i: int) -> int:
        return sum(s.selected for s in stats.get(ctypes.c_uint32(i)))
    assert selected(rev) == 60 and selected(rev + 1) == 3
    assert selected(rev & 0xFFFF) == 0


@pytest.mark.root
def test_v4_mapped_destination_on_a_v6_socket(env):
    mapped = "::ffff:" + VIP4
    put_service(env.lb.maps, VIP4, 80, "TCP", [(b, TCP_PORT) for b in BACKENDS4], 31)
    put_service(env.lb.maps, VIP4, 53, "UDP", [(b, UDP_PORT) for b in BACKENDS4], 32)
    try:
        t, u = env.client(
            tcp(mapped, 80, 30),
            {"op": "udp", "dst": mapped, "port": 53, "sockets": 2, "sends": 2},
        )
    finally:
        del_service(env.lb.maps, VIP4, 80, "TCP", 3)
        del_service(env.lb.maps, VIP4, 53, "UDP", 3)
    assert t["errors"] == {} and set(t["ids"]) <= set(BACKENDS4) and len(t["ids"]) == 30
    assert {tuple(p) for p in t["peers"]} == {(mapped, 80)}
    for s in u["sockets"]:
        assert set(s["ids"]) <= set(BACKENDS4)
        assert {tuple(f) for f in s["froms"]} == {(mapped, 53)}


@pytest.mark.root
@pytest.mark.parametrize("vip", [VIP4, VIP6])
def test_no_backend_rejects_or_drops_at_once(env, vip):
    from pyagent.dataplanes.ebpf import layout as L

    drop = int(L.ServiceFlag.DROP_NO_BACKEND)
    for proto in ("TCP", "UDP"):
        put_service(env.lb.maps, vip, 80, proto, [], 41)
        put_service(env.lb.maps, vip, 81, proto, [], 42, flags=drop)
    try:
        res = env.client(*[{"op": "errno", "dst": vip, "port": port, "proto": proto}
                           for port in (80, 81) for proto in ("tcp", "udp")])
    finally:
        for proto in ("TCP", "UDP"):
            del_service(env.lb.maps, vip, 80, proto, 0)
            del_service(env.lb.maps, vip, 81, proto, 0)
    if env.lb.variant.features.set_retval:
        want = ["ECONNREFUSED", "ECONNREFUSED", "ETIMEDOUT", "ETIMEDOUT"]
    else:  # before 5.18 (no bpf_set_retval): the documented fallback
        want = ["EPERM"] * 4
    assert [r["errno"] for r in res] == want
    assert max(r["seconds"] for r in res) < 0.5  # fails at once, no SYN retries


@pytest.mark.root
def test_non_service_traffic_is_untouched(env):
    put_service(env.lb.maps, VIP4, 80, "TCP", [(BACKENDS4[0], TCP_PORT)], 51)
    try:
        direct, other_port, v6 = env.client(
            tcp(BACKENDS4[1], TCP_PORT, 5),
            {"op": "errno", "dst": VIP4, "port": 81, "proto": "tcp"},
            tcp(BACKENDS6[2], TCP_PORT, 5),
        )
    finally:
        del_service(env.lb.maps, VIP4, 80, "TCP", 1)
    assert direct["ids"] == [BACKENDS4[1]] * 5
    assert {tuple(p) for p in direct["peers"]} == {(BACKENDS4[1], TCP_PORT)}
    assert other_port["errno"] == "ENETUNREACH"  # the VIP itself routes nowhere
    assert v6["ids"] == [BACKENDS6[2]] * 5


@pytest.mark.root
@pytest.mark.parametrize("vip,backends", [(VIP4, BACKENDS4), (VIP6, BACKENDS6)])
def test_scope_leaves_other_namespaces_and_opted_out_ones_alone(env, vip, backends):
    """Host-namespace-only translates the host namespace's sockets only (a
    named one, or init_net's with cookie 0, where this test runs), and an
    opted-out namespace is skipped whatever the mode; a skipped socket
    connects to the VIP itself (which routes nowhere in this namespace)."""
    from pyagent.dataplanes.ebpf import events, sock_scope

    maps = env.lb.maps
    put_service(maps, vip, 80, "TCP", [(b, TCP_PORT) for b in backends], 71)
    put_service(maps, vip, 53, "UDP", [(b, UDP_PORT) for b in backends], 72)
    udp = {"op": "udp", "dst": vip, "port": 53, "sockets": 1, "sends": 1, "connect": True}
    mine = 0
    try:
        def outcome() -> str:
            t, u = env.client(tcp(vip, 80, 12),
                              {"op": "errno", "dst": vip, "port": 53, "proto": "udp"})
            if t["errors"] == {"ENETUNREACH": 12} and u["errno"] == "ENETUNREACH":
                return "refused"
            assert not t["errors"] and u["errno"] is None, (t, u)
            assert set(t["ids"]) <= set(backends) and len(set(t["ids"])) > 1, t
            (got,) = env.client(udp)
            assert got["sockets"][0]["ids"][0] in backends
            return "served"

        # the client namespace's cookie as the hooks see it, on any kernel
        with events.Listener(env.bpffs) as mon:
            assert outcome() == "served"
            mine = {e.netns_cookie for e in mon.events(timeout=5)}.pop()
        try:  # the CLI's way (Linux 5.14): the same cookie
            assert sock_scope.netns_cookie(f"/run/netns/{env.ns}") == mine
        except OSError as e:
            if e.errno != errno.ENOPROTOOPT:
                raise
        other = mine + 1_000_000  # a namespace that does not exist
        sock_scope.configure(maps, host_ns_only=True, host_cookie=mine)
        assert outcome() == "served"
        sock_scope.configure(maps, host_ns_only=True, host_cookie=0)  # init_net: not the client
        assert outcome() == "refused"  # connect() and sendmsg() untouched
        sock_scope.configure(maps, host_ns_only=False)
        assert outcome() == "served"
        sock_scope.exclude(maps, [other])  # someone else opted out: still served
        assert outcome() == "served"
        sock_scope.exclude(maps, [mine])
        assert outcome() == "refused"
        assert sock_scope.excluded(maps) == sorted([mine, other])
        assert sock_scope.include(maps, [mine, other]) == 2
        assert sock_scope.current(maps).flags == 0  # back to the one-lookup path
        assert outcome() == "served"
    finally:
        sock_scope.configure(maps, host_ns_only=False)
        sock_scope.include(maps, [mine, mine + 1_000_000])
        del_service(maps, vip, 80, "TCP", len(backends))
        del_service(maps, vip, 53, "UDP", len(backends))


@pytest.mark.root
def test_removed_backend_gets_no_new_connections(env):
    from pyagent.dataplanes.ebpf import layout as L

    maps = env.lb.maps
    ids = put_service(maps, VIP4, 80, "TCP", [(b, TCP_PORT) for b in BACKENDS4], 61)
    try:
        (before,) = env.client(tcp(VIP4, 80, 60, peer=False))
        assert set(before["ids"]) == set(BACKENDS4)
        # Shrink: master count first, then the surplus slot, then the backend.
        maps.lb4_services.set(L.service_key(VIP4, 80, "TCP"), L.LbService(count=2, rev_nat_id=61))
        maps.lb4_services.delete(L.service_key(VIP4, 80, "TCP", slot=3))
        maps.lb4_backends.delete(ctypes.c_uint32(ids[2]))
        (after,) = env.client(tcp(VIP4, 80, 200, peer=False))
    finally:
        del_service(maps, VIP4, 80, "TCP", 3)
    assert after["errors"] == {}
    assert set(after["ids"]) == set(BACKENDS4[:2])


@pytest.mark.root
def test_vip_is_restored_only_while_the_service_exists(env):
    from pyagent.dataplanes.ebpf import layout as L

    maps = env.lb.maps
    put_service(maps, VIP4, 53, "UDP", [(BACKENDS4[0], UDP_PORT)], 71)
    try:
        p = subprocess.Popen(
            env.client_argv([{"op": "udp_hold", "dst": VIP4, "port": 53}]),
            preexec_fn=env._join, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert json.loads(p.stdout.readline()) == [VIP4, 53]
            # The frontend now belongs to another service id: no restore.
            maps.lb4_services.set(L.service_key(VIP4, 53, "UDP"),
                                  L.LbService(count=1, rev_nat_id=72))
            out, _ = p.communicate("go\n", timeout=30)
        finally:
            p.kill()
            p.wait()
    finally:
        del_service(maps, VIP4, 53, "UDP", 1)
    assert json.loads(out)[0]["peer"] == [BACKENDS4[0], UDP_PORT]


@pytest.mark.root
def test_restart_adopts_links_and_maps_and_cleanup_removes_all():
    from ebpf import bpffs, libbpf
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import socket_lb

    e = Env()
    try:
        caps = socket_lb.Capacities(64, 64, 64, 64, 64, 64)
        first = socket_lb.load(e.bpffs, caps)
        e.lb = first
        assert not any(socket_lb.attach(first, e.bpffs, e.cgroup).values())
        first.maps.lb4_backends.set(ctypes.c_uint32(7), L.backend_value("192.0.2.9", 1, "TCP"))
        ids_before = socket_lb.attached_programs(e.cgroup)
        first.close()
        e.lb = None

        # A "restarted agent": same maps, links adopted and switched in place.
        second = socket_lb.load(e.bpffs, caps)
        e.lb = second
        assert all(socket_lb.attach(second, e.bpffs, e.cgroup).values())
        assert L.to_dict(second.maps.lb4_backends.get(ctypes.c_uint32(7)))["address"] == (
            "192.0.2.9")
        ids_after = socket_lb.attached_programs(e.cgroup)
        for h in second.variant.hooks:
            assert len(ids_after[h.func]) == 1 and ids_after[h.func] != ids_before[h.func]
            link = libbpf.link_info(libbpf.obj_get(socket_lb.link_pin_path(e.bpffs, h)))
            assert link.prog_id == ids_after[h.func][0]
        second.close()
        e.lb = None

        # open_pinned_maps works without compiling.
        maps = socket_lb.open_pinned_maps(e.bpffs)
        assert maps.lb4_backends.count() == 1
        assert maps.lb4_services.max_entries == 64
        maps.close()

        assert socket_lb.detach_all(e.bpffs, e.cgroup) == len(second.variant.hooks)
        assert socket_lb.cleanup(e.bpffs) == len(L.MAPS)
        assert all(v == [] for v in socket_lb.attached_programs(e.cgroup).values())
        assert bpffs.list_pins(os.path.join(e.bpffs, "maps")) == []
        assert bpffs.list_pins(os.path.join(e.bpffs, "links")) == []
        assert socket_lb.cleanup(e.bpffs) == 0  # second run: no-op
        with pytest.raises(FileNotFoundError):
            socket_lb.open_pinned_maps(e.bpffs)
    finally:
        e.close()


@pytest.mark.root
def test_load_refuses_a_pinned_map_with_another_layout(tmp_path):
    from ebpf import bpffs, libbpf
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import socket_lb

    fs = str(tmp_path / "bpffs")
    bpffs.mount(fs)
    try:
        fd = libbpf.map_create(1, "wrong", 4, 4, 4)
        bpffs.pin(fd, L.MAPS["lb4_services"].pin_path(fs))
        os.close(fd)
        with pytest.raises(RuntimeError, match="layout wants"):
            socket_lb.load(fs)
    finally:
        bpffs.umount(fs)


if __name__ == "__main__":
    role, arg = sys.argv[1], json.loads(sys.argv[2])
    if role == "server":
        serve(arg)
    else:
        print(json.dumps([client_op(op) for op in arg]))
