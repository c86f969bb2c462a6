"""`pyagent cleanup`: remove every attachment, link and pin the agent made
with these settings. Idempotent: a second run finds nothing and says so."""

from __future__ import annotations

import argparse
import os

from pyagent.cmd_maps import DEFAULT_BPFFS


def run(args: argparse.Namespace) -> int:
    mode = args.mode or "ebpf"
    if mode != "ebpf":
        print(f"pyagent cleanup: nothing to do for mode {mode} in this build")
        return 0
    from pyagent.dataplanes.ebpf import programs

    if not os.path.isdir(args.bpffs):
        print(f"nothing to clean under {args.bpffs}")
        return 0
    links = programs.detach_all(args.bpffs, args.cgroup)
    pins = programs.cleanup(args.bpffs)
    _remove_dir_or_mount(args.bpffs)
    if links or pins:
        print(f"removed {links} cgroup links and {pins} pins under {args.bpffs}")
    else:
        print(f"nothing to clean under {args.bpffs}")
    return 0


def _remove_dir_or_mount(bpffs: str) -> None:
    """Our directory goes; a bpffs mounted exactly there (by `ensure`) is unmounted
    once nothing of ours is left in it."""
    from ebpf import bpffs as fs

    path = os.path.realpath(bpffs)
    if fs.list_pins(path) and not all(p.endswith(".debug") for p in fs.list_pins(path)):
        return
    mp = fs.mount_point_of(path)
    if mp and mp[0] == path and mp[1] == "bpf":
        fs.umount(path)
    fs.remove_empty_dirs(path)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cleanup", help="remove everything the agent put in the kernel",
                       epilog="example: pyagent cleanup --bpffs /sys/fs/bpf/pyagent")
    p.add_argument("--mode", choices=("ebpf", "iptables", "nftables", "ipvs", "userspace"))
    p.add_argument("--cgroup", help="only links on this cgroup (default: all under bpffs)")
    p.add_argument("--bpffs", default=DEFAULT_BPFFS)
    p.add_argument("--interface", action="append", help="TC attach points to clean")
    p.set_defaults(func=run)
