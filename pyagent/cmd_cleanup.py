"""`pyagent cleanup`: remove every attachment, link, pin, rule and table the
agent made with these settings. Idempotent: a second run finds nothing and
says so.

Each mode's kernel state is recognisable on its own (eBPF: pins under the
bpffs path; iptables: chains named PYAGENT-*; userspace: chains named
PYAUSR-*; nftables: the table `inet pyagent`; IPVS: the kube-ipvs0 link,
virtual servers on its addresses and PYAIPVS-* helper chains). That is how
`pyagent run` detects a mode switch: before it starts, it removes whatever
another mode left (clean_other_modes). Without --mode, cleanup removes the
eBPF state (as before); the other modes' state lives in the network namespace
where cleanup runs, so run it there (`ip netns exec NS pyagent cleanup --mode M`).
`--kube-proxy` removes kube-proxy's state instead (pyagent/migrate.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

from pyagent.cmd_maps import DEFAULT_BPFFS
from pyagent.config import NodeConfig

MODES = ("ebpf", "iptables", "nftables", "ipvs", "userspace")


def _ebpf_present(config: NodeConfig) -> bool:
    return os.path.isdir(config.bpffs) and bool(os.listdir(config.bpffs))


def _ebpf_remove(config: NodeConfig) -> str:
    from pyagent import statusfile
    from pyagent.dataplanes.ebpf import programs

    statusfile.remove(config.bpffs)
    if not os.path.isdir(config.bpffs):
        return f"nothing to clean under {config.bpffs}"
    filters = 0
    if config.interfaces:
        from pyagent.dataplanes.ebpf import tc

        filters = tc.cleanup(config.bpffs, config.interfaces)
    links = programs.detach_all(config.bpffs, config.cgroup)
    pins = programs.cleanup(config.bpffs) + filters
    _remove_dir_or_mount(config.bpffs)
    if not links and not pins:
        return f"nothing to clean under {config.bpffs}"
    return f"removed {links} cgroup links and {pins} pins under {config.bpffs}"


def _remove_dir_or_mount(bpffs: str) -> None:
    """Our directory goes; a bpffs mounted exactly there (by `ensure`) is
    unmounted once nothing of ours is left in it."""
    from ebpf import bpffs as fs

    path = os.path.realpath(bpffs)
    if any(not p.endswith(".debug") for p in fs.list_pins(path)):
        return
    mp = fs.mount_point_of(path)
    if mp and mp[0] == path and mp[1] == "bpf":
        fs.umount(path)
    fs.remove_empty_dirs(path)


def _module(mode: str):  # the mode's module with present(config) and remove(config)
    import importlib

    return importlib.import_module(f"pyagent.dataplanes.{mode}.dataplane")


def cleaners(mode: str) -> tuple[Callable[[NodeConfig], bool], Callable[[NodeConfig], str]]:
    if mode == "ebpf":
        return _ebpf_present, _ebpf_remove
    mod = _module(mode)
    return mod.present, mod.remove


def clean_other_modes(config: NodeConfig) -> list[str]:
    """Remove the kernel state of every mode but config.mode; returns those found."""
    found = []
    for mode in MODES:
        if mode == config.mode:
            continue
        try:
            present, remove = cleaners(mode)
        except ImportError:
            continue
        if present(config):
            remove(config)
            found.append(mode)
    return found


def run(args: argparse.Namespace) -> int:
    if args.kube_proxy:
        from pyagent import migrate

        for line in migrate.cleanup():
            print(line)
        return 0
    config = dataclasses.replace(NodeConfig(), bpffs=args.bpffs, cgroup=args.cgroup,
                                 interfaces=tuple(args.interface or ()))
    for mode in [args.mode or "ebpf"]:
        try:
            present, remove = cleaners(mode)
        except ImportError as exc:
            print(f"{mode}: not available in this build ({exc})")
            continue
        if not present(config) and mode != "ebpf":
            print(f"{mode}: nothing to clean")
            continue
        print(f"{mode}: {remove(config)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cleanup", help="remove everything the agent put in the kernel",
                       epilog="example: pyagent cleanup --bpffs /sys/fs/bpf/pyagent")
    p.add_argument("--mode", choices=MODES, help="the mode to clean (default: ebpf)")
    p.add_argument("--cgroup", help="only links on this cgroup (default: all under bpffs)")
    p.add_argument("--bpffs", default=DEFAULT_BPFFS)
    p.add_argument("--interface", action="append", help="TC attach points to clean")
    p.add_argument("--kube-proxy", action="store_true",
                   help="remove kube-proxy's rules, nftables tables and IPVS state instead "
                        "(as `kube-proxy --cleanup`; see docs/migrate.md)")
    p.set_defaults(func=run)
