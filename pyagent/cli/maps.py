"""`pyagent maps dump`: decode the pinned maps, agent running or not, without
compiling anything."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pyagent.core.config import DEFAULT_BPFFS
from pyagent.core.model import join_host_port
from pyagent.dataplanes.ebpf.dump import dump


def print_table(d: dict[str, Any]) -> None:
    print(f"{'ID':>5}  {'FRONTEND':28} {'SCOPE':9} {'FLAGS':24} BACKENDS")
    for s in d["services"]:
        fe = s["frontend"]
        front = f"{join_host_port(fe['address'], fe['port'])}/{fe['protocol']}"
        flags = ",".join(s["flags"]) or "-"
        bes = [f"{b['backendId']} => {join_host_port(b['address'], b['port'])} ({b['state']})"
               if b["address"] else f"slot {b['slot']}: {b['state']} (a sync is writing)"
               for b in s["backends"]]
        if not bes:
            bes = ["(none: " + ("drop" if "DROP_NO_BACKEND" in s["flags"] else "reject") + ")"]
        print(f"{s['revNatId']:>5}  {front:28} {fe['scope']:9} {flags:24} {bes[0]}")
        for b in bes[1:]:
            print(f"{'':>5}  {'':28} {'':9} {'':24} {b}")
    print(f"\n{len(d['services'])} frontends, {len(d['backends'])} backends, "
          f"{len(d['revNat'])} rev-NAT entries (layout v{d['layoutVersion']}, {d['bpffs']})")


def run_dump(args: argparse.Namespace) -> int:
    from pyagent.dataplanes.ebpf import map_entries

    try:
        d = map_entries.dump_map(args.bpffs, args.map) if args.map else dump(args.bpffs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pyagent maps dump: {exc}", file=sys.stderr)
        return 1
    if args.map and not args.json:
        map_entries.print_table(d)
    elif args.json:
        print(json.dumps(d, indent=2))
    else:
        print_table(d)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("maps", help="inspect the pinned BPF maps")
    msub = p.add_subparsers(dest="maps_command", required=True, metavar="SUBCOMMAND")
    d = msub.add_parser("dump", help="decode services, backends and rev-NAT maps",
                        epilog="example: pyagent maps dump --bpffs /sys/fs/bpf/pyagent --json")
    d.add_argument("--bpffs", default=DEFAULT_BPFFS)
    d.add_argument("--json", action="store_true")
    d.add_argument("--map", metavar="NAME",
                   help="one map's entries instead: conntrack, affinity, sockrev, or a map "
                        "name (lb4_ct, lb_affinity, lb4_sockrev, ...)")
    d.set_defaults(func=run_dump)
