"""`pyagent services list` and `pyagent status`: the operator's first look.
Both read the pinned maps (no agent needed) and name what they can from the
running agent's status file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


def status(bpffs: str, cgroup: str | None) -> dict[str, Any]:
    from pyagent.dataplanes.ebpf import socket_lb

    st = statusfile.read(bpffs) or {}
    cgroup = cgroup or st.get("cgroup")
    out: dict[str, Any] = {"mode": st.get("mode", "ebpf"), "bpffs": bpffs, "cgroup": cgroup,
                           "agentPid": st.get("pid"), "lastSync": st.get("lastSync"),
                           "lastSyncSeconds": st.get("lastSyncSeconds"),
                           "serviceErrors": st.get("errors", {}),
                           "refused": st.get("refused", []),
                           "objectErrors": st.get("objectErrors", [])}
    if out["agentPid"]:
        try:
            os.kill(out["agentPid"], 0)
            out["agentRunning"] = True
        except OSError:
            out["agentRunning"] = False
    try:
        d = dump(bpffs)
        out["maps"] = {name: {**m, "fill": round(m.get("entries", 0) / m["maxEntries"], 6)}
                       for name, m in d["maps"].items() if "entries" in m}
        out["frontends"] = len(d["services"])
    except (FileNotFoundError, ValueError) as exc:
        out["maps"] = {}
        out["mapsError"] = str(exc)
    out["attachments"] = socket_lb.attached_programs(cgroup) if cgroup else {}
    out["datapath"] = socket_lb.read_variant(bpffs)  # kernel features and fallbacks
    return out


def run_status(args: argparse.Namespace) -> int:
    out = status(args.bpffs, args.cgroup)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    age = f"{time.time() - out['lastSync']:.1f}s ago" if out.get("lastSync") else "never"
    print(f"mode:        {out['mode']}")
    print(f"agent:       pid {out.get('agentPid') or '-'} "
          f"({'running' if out.get('agentRunning') else 'not running'})")
    print(f"last sync:   {age}")
    print(f"cgroup:      {out['cgroup'] or '-'}")
    for hook, ids in sorted(out["attachments"].items()):
        print(f"  {hook:22} {'prog ' + ','.join(map(str, ids)) if ids else 'not attached'}")
    if dp := out.get("datapath"):
        flags = " ".join(f"{k}={v}" for k, v in sorted(dp["defines"].items()))
        print(f"datapath:    {flags}, attach {dp['attach']}, "
              f"missing: {', '.join(dp['missing']) or 'nothing'}")
        for why in dp["degraded"]:
            print(f"  fallback: {why}")
    print(f"bpffs:       {out['bpffs']}")
    for name, m in sorted(out["maps"].items()):
        print(f"  {name:22} {m['entries']:>8} / {m['maxEntries']:<8} ({m['fill']:.1%})")
    if out.get("mapsError"):
        print(f"  {out['mapsError']}")
    refused = out["refused"] or [{"service": svc, "reason": "error", "map": "", "message": err}
                                 for svc, err in out["serviceErrors"].items()]
    if refused:
        print(f"refused:     {len(refused)} services not programmed "
              "(they keep their last good state)")
    for r in refused:
        where = f" ({r['map']})" if r["map"] else ""
        print(f"  {r['service']:30} {r['reason']}{where}: {r['message']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("services", help="services as the kernel holds them")
    ssub = p.add_subparsers(dest="services_command", required=True, metavar="SUBCOMMAND")
    ls = ssub.add_parser("list", help="ID, frontend, type, service and backends",
                         epilog="example: pyagent services list --json")
    ls.add_argument("--bpffs", default=DEFAULT_BPFFS)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    st = sub.add_parser("status", help="mode, attachments, map fill, last sync",
                        epilog="example: pyagent status --bpffs /sys/fs/bpf/pyagent")
    st.add_argument("--bpffs", default=DEFAULT_BPFFS)
    st.add_argument("--cgroup", help="cgroup to query (default: the agent's)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_status)
