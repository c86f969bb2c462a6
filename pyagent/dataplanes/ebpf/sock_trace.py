"""`pyagent trace --bpf` for the socket path (ClusterIPs, and every
frontend as pods and the node reach it): a throwaway child process joins
the agent's cgroup and does a real, non-blocking connect() to the
frontend. The cgroup hooks decide as they would for any client; the answer
comes from the kernel itself: the connect() errno (refused, dropped) or
the socket rev-NAT entry the hook wrote for the child's socket cookie
(the backend it chose). The child never waits for a handshake.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from typing import Any

from pyagent.dataplanes.ebpf import layout as L

SO_COOKIE = 57  # <asm-generic/socket.h>
VERDICTS = {errno.ECONNREFUSED: "REJECT", errno.ETIMEDOUT: "DROP",
            errno.EHOSTUNREACH: "ERROR", errno.EPERM: "REJECT_OR_DROP"}


class NotLoaded(RuntimeError):
    """The socket datapath is not loaded where the caller looked."""


def _connect_in_cgroup(cgroup: str, dst: str, dport: int, proto: str) -> dict[str, Any]:
    """Fork a child into cgroup that connect()s once; its {cookie, errno}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
            fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
            kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
            with socket.socket(fam, kind) as s:
                s.setblocking(False)
                cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8),
                                        "little")
                err = s.connect_ex((dst, dport))
                if err == errno.EINPROGRESS:
                    err = 0
            out = {"cookie": cookie, "errno": err}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out, code = {"error": str(exc)}, 1
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    res = json.loads(data or '{"error": "the child died"}')
    if "error" in res:
        raise OSError(f"connect() from {cgroup}: {res['error']}")
    return res


def _sockrev_entry(bpffs: str, family: int, cookie: int) -> tuple[str, int, str, int] | None:
    """(backend, backend port, frontend, frontend port) the hook recorded for cookie."""
    from pyagent.dataplanes.ebpf import socket_lb

    name = f"lb{family}_sockrev"
    m = socket_lb.open_pinned(bpffs, {name: L.MAPS[name]}, "socket LB")[name]
    decode = L.from_ip6 if family == 6 else L.from_ip4
    try:
        for k, v in m.items():
            if k.cookie == cookie:
                return (decode(k.address), L.from_be16(k.port), decode(v.address),
                        L.from_be16(v.port))
    finally:
        m.close()
    return None


def trace_socket(bpffs: str, cgroup: str | None, dst: str, dport: int,
                 proto: str = "TCP") -> dict[str, Any]:
    """The socket hooks' answer for a connect() to (dst, dport)."""
    if not os.path.exists(L.MAPS["lb4_sockrev"].pin_path(bpffs)):
        raise NotLoaded(f"the socket datapath is not loaded in {bpffs}: no pinned maps "
                        f"(is an agent running with --bpffs {bpffs}?)")
    if not cgroup or not os.path.isfile(os.path.join(cgroup, "cgroup.procs")):
        raise NotLoaded(f"no cgroup to connect() from ({cgroup or 'unknown'}): give --cgroup, "
                        "or run the agent so that its status file names it")
    from pyagent.dataplanes.ebpf import socket_lb

    if not any(socket_lb.attached_programs(cgroup).values()):
        raise NotLoaded(f"no socket LB programs are attached to {cgroup}")
    family = 6 if ":" in dst else 4
    res = _connect_in_cgroup(cgroup, dst, dport, proto)
    out: dict[str, Any] = {"path": "socket", "cgroup": cgroup, "dst": dst, "dport": dport,
                           "proto": proto, "errno": errno.errorcode.get(res["errno"])
                           if res["errno"] else None, "endpoint": None}
    entry = _sockrev_entry(bpffs, family, res["cookie"])
    if entry is not None:
        backend, bport, _front, _fport = entry
        out["endpoint"] = f"[{backend}]:{bport}" if family == 6 else f"{backend}:{bport}"
        out["verdict"] = "DNAT"
    elif res["errno"] in VERDICTS:
        out["verdict"] = VERDICTS[res["errno"]]
    else:
        out["verdict"] = "NO_MATCH"  # the hooks left the address alone
    return out
