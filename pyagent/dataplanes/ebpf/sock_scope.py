"""Which sockets the socket LB translates (lb_sock_cfg, lb_sock_skip).

By default every socket in the cgroup. Two ways to leave some alone, so
their connect() reaches the VIP itself (a service-mesh sidecar then sees
the VIP as destination) and the TC programs on the pod interfaces balance
their packets instead (tc.py sets LB_CFG_F_POD_LB for that):
- host-namespace-only (Cilium's socketLB.hostNamespaceOnly): only sockets
  of the host network namespace, the agent's own;
- per-pod opt-out: network namespaces listed by their cookie in
  lb_sock_skip (`pyagent socket-lb exclude NETNS`).

Namespaces are named by their cookie (SO_NETNS_COOKIE, Linux 5.14), the
value bpf_get_netns_cookie() returns at the hooks. Without it the host
namespace can only be init_net (the BPF side takes cookie 0 for it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable

from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.socket_lb import LBMaps

SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h
CLONE_NEWNET = 0x40000000


def own_netns_cookie() -> int:
    """The cookie of this thread's network namespace. OSError(ENOPROTOOPT)
    before Linux 5.14, saying where else to find it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                raise
            raise OSError(errno.ENOPROTOOPT, "this kernel cannot name a network namespace "
                          "(SO_NETNS_COOKIE is Linux 5.14): give its cookie instead, as "
                          "`pyagent monitor` shows it for the pod's connections") from exc
    return struct.unpack("=Q", raw)[0]


def netns_cookie(path: str) -> int:
    """The cookie of the network namespace at path (/proc/PID/ns/net,
    /run/netns/NAME), read from a thread that enters it (setns moves only
    the calling thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    out: list[int | BaseException] = []

    def probe() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            out.append(own_netns_cookie())
        except BaseException as exc:  # handed to the caller's thread
            out.append(exc)
        # the thread ends here, and its namespace with it

    try:
        t = threading.Thread(target=probe, name="netns-cookie")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _in_init_net() -> bool:
    """This process shares init_net's namespace: that of kthreadd (pid 2,
    a kernel thread, always in init_net), when it is visible."""
    try:
        with open("/proc/2/comm") as f:
            if f.read().strip() != "kthreadd":
                return False
        return os.stat("/proc/2/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def host_netns_cookie() -> int:
    """The cookie the BPF side compares with for host-namespace-only: ours,
    or 0 (init_net's, taken by the program itself) on kernels before 5.14
    when we run in init_net. ValueError when neither can be had."""
    try:
        return own_netns_cookie()
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise
    if _in_init_net():
        return 0
    raise ValueError("socketLB hostNamespaceOnly: this kernel has no SO_NETNS_COOKIE (5.14) "
                     "and the agent does not run in the initial network namespace, so the "
                     "host namespace cannot be named to the socket LB")


def configure(maps: LBMaps, host_ns_only: bool, host_cookie: int = 0) -> L.LbSockConfig:
    """Write the scope; SKIP_LIST follows lb_sock_skip (set while it holds
    any namespace). One array write: the next connect() sees all of it."""
    cfg = L.LbSockConfig(host_netns_cookie=host_cookie if host_ns_only else 0)
    if host_ns_only:
        cfg.flags |= L.SockFlag.HOST_NS_ONLY
    if excluded(maps):
        cfg.flags |= L.SockFlag.SKIP_LIST
    maps.lb_sock_cfg.set(ctypes.c_uint32(L.SOCK_CFG_KEY), cfg)
    return cfg


def current(maps: LBMaps) -> L.LbSockConfig:
    got = maps.lb_sock_cfg.get(ctypes.c_uint32(L.SOCK_CFG_KEY))
    assert isinstance(got, L.LbSockConfig)
    return got


def skips_pods(maps: LBMaps) -> bool:
    """Does the socket LB leave any pod's sockets to the TC path?"""
    return bool(current(maps).flags)


def excluded(maps: LBMaps) -> list[int]:
    """The netns cookies of the pods that opted out."""
    return sorted(k.value for k, _ in maps.lb_sock_skip.items())


def exclude(maps: LBMaps, cookies: Iterable[int]) -> None:
    """Opt namespaces out: the map first, then the flag that makes the
    hooks look it up."""
    for c in cookies:
        maps.lb_sock_skip.set(ctypes.c_uint64(c), ctypes.c_uint8(1))
    cfg = current(maps)
    cfg.flags |= L.SockFlag.SKIP_LIST
    maps.lb_sock_cfg.set(ctypes.c_uint32(L.SOCK_CFG_KEY), cfg)


def include(maps: LBMaps, cookies: Iterable[int]) -> int:
    """Opt namespaces back in; the number removed."""
    n = sum(maps.lb_sock_skip.delete(ctypes.c_uint64(c)) for c in cookies)
    if not excluded(maps):
        cfg = current(maps)
        cfg.flags &= ~L.SockFlag.SKIP_LIST
        maps.lb_sock_cfg.set(ctypes.c_uint32(L.SOCK_CFG_KEY), cfg)
    return n
