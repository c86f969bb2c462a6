"""`pyagent status`: is the agent on this node healthy, and what does it
serve? Reads the agent's status file and the kernel (maps, cgroup hooks,
TC filters), so it works whether or not the agent runs.

Exit status (scriptable, like `cilium status`): 0 healthy, 1 unhealthy
(agent down, source unreachable, sync stale, programs not attached, maps
missing), 2 nothing to show (no agent ever ran with this --bpffs).
Refused Services and kernel fallbacks are reported but are not failures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from typing import Any

from pyagent.cli.kubeproxy_flags import version_text
from pyagent.core.config import DEFAULT_BPFFS
from pyagent.dataplanes.ebpf.dump import dump
from pyagent.observe import statusfile

EXIT_OK, EXIT_UNHEALTHY, EXIT_NOTHING = 0, 1, 2
STALE_GRACE = 10.0  # seconds beyond two sync periods before a sync counts as stale


def interfaces(names: list[str]) -> dict[str, dict[str, str]]:
    """{ifname: {direction: program}} of our TC filters, "missing" when the
    interface is not in this network namespace."""
    if not names:
        return {}
    from pyagent.dataplanes.ebpf import tc

    out: dict[str, dict[str, str]] = {}
    for name in names:
        try:
            out.update(tc.attached([name]))
        except Exception:  # noqa: BLE001 - a missing link must not hide the rest
            out[name] = {"missing": "not in this network namespace"}
    return out


def monitors(bpffs: str) -> dict[str, Any] | None:
    from pyagent.dataplanes.ebpf import events

    try:
        info = events.listeners(bpffs)
    except (FileNotFoundError, OSError, ValueError):
        return None
    return {"listening": info.live, "stale": info.stale, "lost": info.lost}


def base_status(bpffs: str, cgroup: str | None) -> dict[str, Any]:
    """Mode, attachments and map fill from the kernel, named from the status file."""
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
    out["balancing"] = balancing(bpffs) if out["maps"] else {}
    return out


def balancing(bpffs: str) -> dict[str, Any]:
    """What the pinned maps say the datapath does: the socket LB's scope and
    the TC programs' mode for other nodes' backends (snat, dsr, hybrid)."""
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import sock_scope, socket_lb, tc

    out: dict[str, Any] = {}
    maps = socket_lb.open_pinned_maps(bpffs)
    try:
        cfg = sock_scope.current(maps)
        out["socketLB"] = ("host namespace only" if cfg.flags & L.SockFlag.HOST_NS_ONLY
                           else "every namespace")
        out["socketLBExcluded"] = len(sock_scope.excluded(maps))
    finally:
        maps.close()
    try:
        tmaps = tc.open_pinned_tc_maps(bpffs)
    except FileNotFoundError:
        return out
    try:
        flags = tmaps.lb_node_config.get(ctypes.c_uint32(L.CONFIG_KEY)).flags
    finally:
        tmaps.close()
    mode = flags & (L.ConfigFlag.DSR_TCP | L.ConfigFlag.DSR_UDP)
    out["lbMode"] = next(m for m, f in tc.LB_MODE_FLAGS.items() if f == mode)
    out["podLB"] = bool(flags & L.ConfigFlag.POD_LB)
    # per node interface: "native" / "generic" (XDP in front of TC), or
    # "tc: why" where acceleration was asked for and could not run
    out["xdp"] = {k: v for k, v in ((statusfile.read(bpffs) or {}).get("xdp") or {}).items()
                  if v != "tc: disabled"}
    return out


def collect(bpffs: str, cgroup: str | None) -> dict[str, Any]:
    st = statusfile.read(bpffs) or {}
    out = base_status(bpffs, cgroup)
    out.update({
        "version": version_text().removeprefix("pyagent "),
        "agentVersion": st.get("version"),
        "nodeName": st.get("nodeName"),
        "statusFile": bool(st),
        "source": st.get("source"),
        "lastEvent": st.get("lastEvent"),
        "syncPeriod": st.get("syncPeriod"),
        "healthzAddress": st.get("healthzAddress") or "",
        "metricsAddress": st.get("metricsAddress") or "",
        "interfaces": interfaces(st.get("interfaces", [])),
        "sourceErrors": st.get("sourceErrors", []),
        "monitors": monitors(bpffs) if out.get("maps") else None,
    })
    return out


def assess(s: dict[str, Any], now: float) -> tuple[int, list[str], list[str]]:
    """(exit status, problems, warnings) of a collected status."""
    if not s.get("statusFile") and not s.get("maps"):
        return EXIT_NOTHING, [f"nothing to show: no agent has run with --bpffs {s['bpffs']}"], []
    problems, warnings = [], []
    if not s.get("agentRunning"):
        problems.append("the agent is not running")
    src = s.get("source") or {}
    if s.get("agentRunning") and src and not src.get("connected", True):
        problems.append(f"source {src.get('kind')} unreachable: {src.get('problem') or '?'}")
    period = s.get("syncPeriod") or 30.0
    if s.get("agentRunning") and s.get("lastSync") and \
            now - s["lastSync"] > 2 * period + STALE_GRACE:
        problems.append(f"last sync {now - s['lastSync']:.0f}s ago (sync period {period:.0f}s)")
    if s.get("mapsError"):
        problems.append(s["mapsError"])
    if s.get("mode") == "ebpf" and s.get("cgroup"):
        loaded = set((s.get("datapath") or {}).get("hooks") or s["attachments"])
        missing = sorted(h for h, ids in s["attachments"].items() if h in loaded and not ids)
        if missing:
            problems.append(f"not attached to {s['cgroup']}: {', '.join(missing)}")
    for ifname, progs in s.get("interfaces", {}).items():
        if not progs:
            problems.append(f"no TC programs on {ifname}")
    refused = s.get("refused") or [{"service": svc, "reason": "error", "map": "",
                                    "message": err}
                                   for svc, err in s.get("serviceErrors", {}).items()]
    for r in refused:
        where = f" ({r['map']})" if r.get("map") else ""
        warnings.append(f"refused {r['service']}: {r['reason']}{where}: {r['message']}")
    warnings += [f"object: {e}" for e in s.get("objectErrors", [])]
    warnings += [f"source: {e}" for e in s.get("sourceErrors", [])]
    for name, m in sorted((s.get("maps") or {}).items()):
        if m.get("fill", 0) >= 0.9:
            warnings.append(f"map {name} {m['fill']:.0%} full")
    if (s.get("monitors") or {}).get("stale"):
        warnings.append(f"stale monitor slots (killed monitors): {s['monitors']['stale']}")
    return (EXIT_UNHEALTHY if problems else EXIT_OK), problems, warnings


def _age(t: float | None, now: float) -> str:
    return f"{now - t:.1f}s ago" if t else "never"


def render(s: dict[str, Any], now: float) -> str:
    code, problems, warnings = assess(s, now)
    lines = [f"pyagent:     {s['version']}"
             + (f" (agent {s['agentVersion']})" if s.get("agentVersion")
                and s["agentVersion"] != s["version"] else "")
             + f", mode {s['mode']}" + (f", node {s['nodeName']}" if s.get("nodeName") else "")]
    lines.append(f"agent:       pid {s.get('agentPid') or '-'} "
                 f"({'running' if s.get('agentRunning') else 'not running'})")
    took = f" (took {s['lastSyncSeconds']:.3f}s)" if s.get("lastSyncSeconds") else ""
    lines.append(f"last sync:   {_age(s.get('lastSync'), now)}{took}")
    src = s.get("source") or {}
    if src:
        state = "connected" if src.get("connected") else "UNREACHABLE"
        synced = ", synced" if src.get("synced") else ", not synced yet"
        lines.append(f"source:      {src.get('kind')} {src.get('where', '')} {state}{synced}"
                     + (f": {src['problem']}" if src.get("problem") else ""))
    lines.append(f"last event:  {_age(s.get('lastEvent'), now)}")
    lines.append(f"healthz:     {s.get('healthzAddress') or 'off'}")
    lines.append(f"metrics:     {s.get('metricsAddress') or 'off'}")
    lines.append(f"cgroup:      {s.get('cgroup') or '-'}")
    for hook, ids in sorted(s.get("attachments", {}).items()):
        lines.append(f"  {hook:22} {'prog ' + ','.join(map(str, ids)) if ids else 'not attached'}")
    if s.get("interfaces"):
        lines.append("interfaces:")
        for ifname, progs in sorted(s["interfaces"].items()):
            shown = ", ".join(f"{d} {p}" for d, p in sorted(progs.items())) or "not attached"
            lines.append(f"  {ifname:22} {shown}")
    if dp := s.get("datapath"):
        flags = " ".join(f"{k}={v}" for k, v in sorted(dp["defines"].items()))
        lines.append(f"datapath:    {flags}, attach {dp['attach']}, "
                     f"missing: {', '.join(dp['missing']) or 'nothing'}")
        lines += [f"  fallback: {why}" for why in dp["degraded"]]
    if b := s.get("balancing"):
        text = f"socket LB {b['socketLB']}"
        if b["socketLBExcluded"]:
            text += f" ({b['socketLBExcluded']} namespaces opted out)"
        if "lbMode" in b:
            text += f", TC {b['lbMode']}" + (", pods balanced by TC" if b["podLB"] else "")
        for ifname, how in sorted((b.get("xdp") or {}).items()):
            text += f", {ifname} " + (f"XDP {how}" if not how.startswith("tc:") else
                                      f"TC only ({how.removeprefix('tc: ')})")
        lines.append(f"balancing:   {text}")
    lines.append(f"bpffs:       {s['bpffs']} ({s.get('frontends', 0)} frontends)")
    for name, m in sorted((s.get("maps") or {}).items()):
        lines.append(f"  {name:22} {m['entries']:>8} / {m['maxEntries']:<8} ({m['fill']:.1%})")
    if (mon := s.get("monitors")) is not None:
        lines.append(f"monitors:    {len(mon['listening'])} listening"
                     + (f", {mon['lost']} events lost" if mon["lost"] else ""))
    lines += [f"warning:     {w}" for w in warnings]
    lines += [f"problem:     {p}" for p in problems]
    lines.append("status:      " + {EXIT_OK: "OK", EXIT_UNHEALTHY: "UNHEALTHY",
                                    EXIT_NOTHING: "NOTHING TO SHOW"}[code])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    s = collect(args.bpffs, args.cgroup)
    now = time.time()
    code, problems, warnings = assess(s, now)
    if code == EXIT_NOTHING:
        print(f"pyagent status: {problems[0]}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps({**s, "healthy": code == EXIT_OK, "problems": problems,
                          "warnings": warnings}, indent=2))
    else:
        print(render(s, now))
    return code


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="health, source, attachments, map fill, last sync "
                        "(exit 1: unhealthy, 2: nothing to show)",
                        epilog="example: pyagent status --bpffs /sys/fs/bpf/pyagent")
    st.add_argument("--bpffs", default=DEFAULT_BPFFS)
    st.add_argument("--cgroup", help="cgroup to query (default: the agent's)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run)
