"""`pyagent services list`: one row per frontend as the kernel holds it,
with scope, type, affinity, algorithm, and per backend its state, live
connections and new-connection count (dataplanes/ebpf/conn_counts.py).
Table, wide table, JSON or YAML; --watch redraws it. It reads the pinned
maps (no agent needed) and names what it can from the running agent's
status file (`pyagent status` is pyagent/cli/status.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pyagent.core.config import DEFAULT_BPFFS
from pyagent.core.model import join_host_port
from pyagent.dataplanes.ebpf.dump import dump
from pyagent.observe import statusfile

TYPES = ("CLUSTER_IP", "NODE_PORT", "EXTERNAL_IP", "LOADBALANCER")
OUTPUTS = ("table", "wide", "json", "yaml")


def frontend_key(fe: dict[str, Any]) -> tuple:
    """The same frontend in `maps dump` and in the status file."""
    return (fe["address"], fe["port"], fe["protocol"], fe["scope"])


def service_rows(d: dict[str, Any], frontends: list[dict[str, Any]],
                 new: dict[int, int] | None = None,
                 active: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Rows of a `maps dump` (frontends), named by the agent's status file."""
    names = {frontend_key(fe): fe["service"] for fe in frontends}
    new, active = new or {}, active or {}
    rows = []
    for s in d["services"]:
        fe = s["frontend"]
        key = frontend_key(fe)
        eps = [{"address": join_host_port(b["address"], b["port"]), "id": b["backendId"],
                "state": b["state"], "activeConnections": active.get(b["backendId"], 0),
                "newConnections": new.get(b["backendId"], 0)}
               for b in s["backends"] if b["address"]]
        rows.append({
            "id": s["revNatId"], "service": names.get(key, ""),
            "frontend": f"{join_host_port(fe['address'], fe['port'])}/{fe['protocol']}",
            "scope": fe["scope"],
            "type": next((t for t in TYPES if t in s["flags"]), "?"),
            "affinity": (f"ClientIP/{s['affinityTimeout']}s" if "AFFINITY" in s["flags"]
                         else "None"),
            "algorithm": s["algorithm"],
            "flags": [f for f in s["flags"] if f not in TYPES],
            "backends": [e["address"] for e in eps],  # stable since the first release
            "endpoints": eps,
            "noBackends": ("drop" if "DROP_NO_BACKEND" in s["flags"] else "reject")
            if not s["backends"] else None})
    return rows


def _backend_cell(e: dict[str, Any]) -> str:
    return (f"{e['address']} ({e['state']}, {e['activeConnections']} conns, "
            f"{e['newConnections']} new)")


def table(rows: list[dict[str, Any]], wide: bool = False) -> str:
    cols = [("ID", 5), ("FRONTEND", 28), ("SCOPE", 8), ("TYPE", 12), ("SERVICE", 28)]
    if wide:
        cols += [("AFFINITY", 16), ("ALGORITHM", 11), ("FLAGS", 24)]

    def line(cells: list[str]) -> str:
        """cells: one per column, then the BACKENDS cell."""
        fixed = [f"{cells[0]:>5} "] + [f"{c:{w}}" for c, (_, w) in zip(cells[1:-1], cols[1:],
                                                                      strict=True)]
        return (" ".join(fixed) + " " + cells[-1]).rstrip()

    lines = [line([c for c, _ in cols] + ["BACKENDS"])]
    for r in rows:
        cells = [str(r["id"]), r["frontend"], r["scope"], r["type"], r["service"] or "-"]
        if wide:
            cells += [r["affinity"], r["algorithm"], ",".join(r["flags"]) or "-"]
        bes = [_backend_cell(e) for e in r["endpoints"]] or [f"(none: {r['noBackends']})"]
        lines.append(line(cells + [bes[0]]))
        lines += [line([""] * len(cols) + [b]) for b in bes[1:]]
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps(rows, indent=2)
    if output == "yaml":
        import yaml

        return yaml.safe_dump(rows, sort_keys=False).rstrip()
    return table(rows, wide=output == "wide")


def collect(bpffs: str) -> list[dict[str, Any]]:
    from pyagent.dataplanes.ebpf.conn_counts import backend_counters

    d = dump(bpffs)
    new, active = backend_counters(bpffs)
    return service_rows(d, (statusfile.read(bpffs) or {}).get("frontends", []), new, active)


def run_list(args: argparse.Namespace) -> int:
    output = "json" if args.json else args.output
    while True:
        try:
            text = render(collect(args.bpffs), output)
        except (FileNotFoundError, ValueError) as exc:
            print(f"pyagent services list: {exc}", file=sys.stderr)
            return 1
        if args.watch is None:
            print(text)
            return 0
        # redraw in place: home, clear, then the new table with a timestamp
        sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") +
                         f"every {args.watch:g}s, Ctrl-C to stop\n\n" + text + "\n")
        sys.stdout.flush()
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("services", help="services as the kernel holds them")
    ssub = p.add_subparsers(dest="services_command", required=True, metavar="SUBCOMMAND")
    ls = ssub.add_parser("list", help="frontends: scope, type, service, affinity, algorithm, "
                         "backends with state and connection counts",
                         epilog="example: pyagent services list -o wide --watch")
    ls.add_argument("--bpffs", default=DEFAULT_BPFFS)
    ls.add_argument("-o", "--output", choices=OUTPUTS, default="table",
                    help="table (default), wide (adds affinity, algorithm, flags), json, yaml")
    ls.add_argument("--json", action="store_true", help="same as -o json")
    ls.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                    help="redraw every SECONDS (default 2) until Ctrl-C")
    ls.set_defaults(func=run_list)
