"""`pyagent mount-host`: the DaemonSet's init step, so the agent's socket
hooks cover the whole node and its pins reach the host.

1. bpffs at --bpffs when none is mounted there, from inside the pod: the
   volume is a hostPath with Bidirectional propagation, so the mount reaches
   the host (and every later pod).
2. The host's cgroup v2 root at --cgroup2: the directory created and cgroup2
   mounted from the host's own cgroup and mount namespaces (those of the
   host's PID 1, through its /proc mounted at --host-init's parent, as
   Cilium's init container does with nsenter). Mounted from the pod's
   private cgroup namespace instead, the mount's root would be the pod's own
   cgroup and the hooks would see only the agent's own container.

No host binary is needed (setns and mount are made by this process), so the
host may be a minimal or managed OS. Idempotent: mounts already there stay.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def fs_type_at(path: str) -> str | None:
    """The file system type mounted exactly at `path` (the last one), if any."""
    found = None
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == real:
                found = right.split()[0]
    return found


def mount(source: str, target: str, fstype: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None),
           f"mount -t {fstype} {target}")


def ensure_mount(path: str, fstype: str, source: str) -> str:
    os.makedirs(path, exist_ok=True)
    if fs_type_at(path) == fstype:
        return f"{fstype} already mounted at {path}"
    mount(source, path, fstype)
    return f"mounted {fstype} at {path}"


def enter(host_init: str) -> None:
    """Join the cgroup and mount namespaces of the process at `host_init`
    (/hostproc/1: the host's PID 1). The cgroup namespace first: entering the
    mount namespace leaves the pod's /hostproc behind."""
    fds = [os.open(os.path.join(host_init, "ns", ns), os.O_RDONLY) for ns in ("cgroup", "mnt")]
    try:
        _check(_libc.setns(fds[0], CLONE_NEWCGROUP), "setns cgroup")
        _check(_libc.setns(fds[1], CLONE_NEWNS), "setns mnt")
    finally:
        for fd in fds:
            os.close(fd)
    os.chdir("/")


def run(args: argparse.Namespace) -> int:
    try:
        if args.bpffs:
            print(ensure_mount(args.bpffs, "bpf", "bpf"), flush=True)
        if args.cgroup2:
            enter(args.host_init)
            print(ensure_mount(args.cgroup2, "cgroup2", "none") + " (the host's cgroup root)",
                  flush=True)
    except OSError as exc:
        print(f"pyagent mount-host: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount-host", help="DaemonSet init step: the host's cgroup2 root "
                       "and a bpffs, mounted where the agent expects them",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host-init", default="/hostproc/1",
                   help="/proc/PID of a process in the host's namespaces (default /hostproc/1)")
    p.add_argument("--cgroup2", default="/run/pyagent/cgroupv2",
                   help="where the host's cgroup v2 root goes (in the host's mount namespace; "
                        "'' skips it)")
    p.add_argument("--bpffs", default="/sys/fs/bpf",
                   help="bpffs mount point, in the pod (a Bidirectional hostPath); '' skips it")
    p.set_defaults(func=run)
