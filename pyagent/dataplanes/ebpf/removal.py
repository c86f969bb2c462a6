"""Detect and remove the eBPF mode's kernel state (`pyagent cleanup`, mode
switches, EbpfDataplane.cleanup): the cgroup links, TC filters and pins under
the bpffs path, then the directory (or the bpffs mounted
exactly there, once nothing of ours is left in it)."""

from __future__ import annotations

import os

from pyagent.core.config import NodeConfig


def present(config: NodeConfig) -> bool:
    return os.path.isdir(config.bpffs) and bool(os.listdir(config.bpffs))


def remove(config: NodeConfig) -> str:
    from pyagent.dataplanes.ebpf import socket_lb

    if not os.path.isdir(config.bpffs):
        return f"nothing to clean under {config.bpffs}"
    filters = 0
    ifaces = config.interfaces + config.pod_interfaces
    if ifaces:
        from pyagent.dataplanes.ebpf import accel, pod_links, tc

        ifaces = tuple(pod_links.expand(ifaces))
        # XDP first: it takes packets before the TC programs see them
        filters = accel.detach(config.interfaces) + tc.cleanup(config.bpffs, ifaces)
    links = socket_lb.detach_all(config.bpffs, config.cgroup)
    pins = socket_lb.cleanup(config.bpffs) + filters
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
