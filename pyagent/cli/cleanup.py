"""`pyagent cleanup`: remove every attachment, link, pin, rule and table the
agent made with these settings. Idempotent: a second run finds nothing and
says so.

The modes and how each one's state is found and removed are in
pyagent.dataplanes.registry; `pyagent run` uses the same code to remove
what another mode left (a mode switch). Without --mode, cleanup removes the
eBPF state (as before); the other modes' state lives in the network namespace
where cleanup runs, so run it there (`ip netns exec NS pyagent cleanup --mode M`).
`--kube-proxy` removes kube-proxy's state instead (pyagent/node/migrate.py).
"""

from __future__ import annotations

import argparse
import dataclasses

from pyagent.core.config import DEFAULT_BPFFS, NodeConfig
from pyagent.dataplanes import registry
from pyagent.observe import statusfile


def run(args: argparse.Namespace) -> int:
    if args.kube_proxy:
        from pyagent.node import migrate

        for line in migrate.cleanup():
            print(line)
        return 0
    config = dataclasses.replace(NodeConfig(), bpffs=args.bpffs, cgroup=args.cgroup,
                                 interfaces=tuple(args.interface or ()))
    name = args.mode or "ebpf"
    try:
        mode = registry.get(name)
    except ImportError as exc:
        print(f"{name}: not available in this build ({exc})")
        return 0
    print(f"{name}: {mode.cleanup(config)}")
    statusfile.remove(config.bpffs)  # the agent's, whatever its mode (keyed by --bpffs)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cleanup", help="remove everything the agent put in the kernel",
                       epilog="example: pyagent cleanup --bpffs /sys/fs/bpf/pyagent")
    p.add_argument("--mode", choices=registry.MODES, help="the mode to clean (default: ebpf)")
    p.add_argument("--cgroup", help="only links on this cgroup (default: all under bpffs)")
    p.add_argument("--bpffs", default=DEFAULT_BPFFS)
    p.add_argument("--interface", action="append", help="TC attach points to clean")
    p.add_argument("--kube-proxy", action="store_true",
                   help="remove kube-proxy's rules, nftables tables and IPVS state instead "
                        "(as `kube-proxy --cleanup`; see docs/migrate.md)")
    p.set_defaults(func=run)
