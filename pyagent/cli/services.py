"""`pyagent services list`: the operator's first look. It reads the pinned
maps (no agent needed) and names what it can from the running agent's
status file (`pyagent status` is pyagent/cli/status.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pyagent.core.config import DEFAULT_BPFFS
from pyagent.core.model import join_host_port
from pyagent.dataplanes.ebpf.dump import dump
from pyagent.observe import statusfile

TYPES = ("CLUSTER_IP", "NODE_PORT", "EXTERNAL_IP", "LOADBALANCER")


def frontend_key(fe: dict[str, Any]) -> tuple:
    """The same frontend in `maps dump` and in the status file."""
    return (fe["address"], fe["port"], fe["protocol"], fe["scope"])


def service_rows(d: dict[str, Any], frontends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {frontend_key(fe): fe["service"] for fe in frontends}
    rows = []
    for s in d["services"]:
        fe = s["frontend"]
        rows.append({
            "id": s["revNatId"], "service": names.get(frontend_key(fe), ""),
            "frontend": f"{join_host_port(fe['address'], fe['port'])}/{fe['protocol']}",
            "scope": fe["scope"],
            "type": next((t for t in TYPES if t in s["flags"]), "?"),
            "backends": [f"{join_host_port(b['address'], b['port'])}" for b in s["backends"]
                         if b["address"]],
            "noBackends": ("drop" if "DROP_NO_BACKEND" in s["flags"] else "reject")
            if not s["backends"] else None})
    return rows


def run_list(args: argparse.Namespace) -> int:
    try:
        d = dump(args.bpffs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pyagent services list: {exc}", file=sys.stderr)
        return 1
    st = statusfile.read(args.bpffs) or {}
    rows = service_rows(d, st.get("frontends", []))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':>5}  {'FRONTEND':28} {'TYPE':12} {'SERVICE':28} BACKENDS")
    for r in rows:
        bes = r["backends"] or [f"(none: {r['noBackends']})"]
        print(f"{r['id']:>5}  {r['frontend']:28} {r['type']:12} {r['service'] or '-':28} "
              f"{bes[0]}")
        for b in bes[1:]:
            print(f"{'':>5}  {'':28} {'':12} {'':28} {b}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("services", help="services as the kernel holds them")
    ssub = p.add_subparsers(dest="services_command", required=True, metavar="SUBCOMMAND")
    ls = ssub.add_parser("list", help="ID, frontend, type, service and backends",
                         epilog="example: pyagent services list --json")
    ls.add_argument("--bpffs", default=DEFAULT_BPFFS)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
