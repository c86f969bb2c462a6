"""The dataplane modes: name -> how to build one, tell whether its kernel
state is in this node, and remove that state.

`pyagent run` (make a dataplane, after removing what other modes left: a mode
switch), `pyagent cleanup`, `Dataplane.cleanup()` and the benchmarks all go
through here, so a mode is added in one place. Each mode's module is imported
only when that mode is asked for: eBPF needs BCC, IPVS pyroute2, and a node
without them still runs the other modes.

Each mode's kernel state is recognisable on its own (eBPF: pins under the
bpffs path; iptables: chains named PYAGENT-*; userspace: chains named
PYAUSR-*; nftables: the table `inet pyagent`; IPVS: the kube-ipvs0 link,
virtual servers on its addresses and PYAIPVS-* helper chains). The packet
modes' state lives in the network namespace where the caller runs.
"""

from __future__ import annotations

from types import ModuleType

from pyagent.core.config import NodeConfig
from pyagent.dataplanes.base import Dataplane, Mode

MODES = ("ebpf", "iptables", "nftables", "ipvs", "userspace")


def _module(name: str) -> ModuleType:
    # Explicit imports (not a computed path): each stays greppable and lazy.
    if name == "ebpf":
        from pyagent.dataplanes.ebpf import dataplane
    elif name == "iptables":
        from pyagent.dataplanes.iptables import dataplane
    elif name == "nftables":
        from pyagent.dataplanes.nftables import dataplane
    elif name == "ipvs":
        from pyagent.dataplanes.ipvs import dataplane
    elif name == "userspace":
        from pyagent.dataplanes.userspace import dataplane
    else:
        raise KeyError(f"unknown mode {name!r} (one of {', '.join(MODES)})")
    return dataplane


def get(name: str) -> Mode:
    """Mode `name`. KeyError for an unknown name; ImportError when this build
    or node lacks what it needs."""
    mode = _module(name).MODE
    assert isinstance(mode, Mode) and mode.name == name
    return mode


__all__ = ["MODES", "Mode", "clean_other_modes", "create", "get"]


def create(config: NodeConfig) -> Dataplane:
    """The dataplane of config.mode (not set up yet)."""
    return get(config.mode).create(config)


def clean_other_modes(config: NodeConfig) -> list[str]:
    """Remove the kernel state of every mode but config.mode; returns those found."""
    found = []
    for name in MODES:
        if name == config.mode:
            continue
        try:
            mode = get(name)
        except ImportError:
            continue
        if mode.present(config):
            mode.remove(config)
            found.append(name)
    return found
