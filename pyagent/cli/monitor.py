"""`pyagent monitor`: a live stream of load-balancing decisions, straight
from the kernel programs (socket hooks and TC), with filters and JSON.

Events exist only while a monitor listens (dataplanes/ebpf/events.py);
stopping this command (Ctrl-C, SIGTERM, --count, --duration) switches them
off again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from pyagent.core.config import DEFAULT_BPFFS
from pyagent.core.model import PROTOCOL_NAMES as PROTO_NAMES
from pyagent.core.model import join_host_port

VERDICTS = {1: "translated", 2: "affinity", 3: "reject", 4: "drop", 5: "no-backend"}
ORIGINS = {1: "socket", 2: "tc", 3: "xdp"}
NAMES_REFRESH = 2.0  # seconds between re-reads of the Service names


def service_names(bpffs: str) -> dict[int, str]:
    """rev_nat_id -> "namespace/name:port" from the maps and the agent's
    status file; ids the agent has not named are left out."""
    from pyagent.dataplanes.ebpf.dump import dump
    from pyagent.observe import statusfile

    try:
        d = dump(bpffs)
    except (FileNotFoundError, ValueError, OSError):
        return {}
    names = {(fe["address"], fe["port"], fe["protocol"], fe["scope"]): fe["service"]
             for fe in (statusfile.read(bpffs) or {}).get("frontends", [])}
    out: dict[int, str] = {}
    for s in d["services"]:
        fe = s["frontend"]
        key = (fe["address"], fe["port"], fe["protocol"], fe["scope"])
        if key in names:
            out.setdefault(s["revNatId"], names[key])
    return out


def decode(ev: Any, names: dict[int, str]) -> dict[str, Any]:
    """A struct lb_event as JSON-friendly fields."""
    from pyagent.dataplanes.ebpf import events
    from pyagent.dataplanes.ebpf import layout as L

    def addr(a: L.V6Addr) -> str:
        return L.from_ip4(a.p32[0]) if ev.family == 4 else L.from_ip6(a)

    out: dict[str, Any] = {
        "time": datetime.datetime.fromtimestamp(events.monotonic_to_wall(ev.time_ns),
                                                datetime.UTC).isoformat(),
        "origin": ORIGINS.get(ev.origin, str(ev.origin)),
        "protocol": PROTO_NAMES.get(ev.proto, str(ev.proto)),
        "client": ({"netnsCookie": ev.netns_cookie} if ev.origin == 1 else
                   {"address": addr(ev.client), "port": L.from_be16(ev.client_port)}),
        "frontend": {"address": addr(ev.frontend), "port": L.from_be16(ev.frontend_port)},
        "revNatId": ev.rev_nat_id,
        "service": names.get(ev.rev_nat_id),
        "backend": None,
        "verdict": VERDICTS.get(ev.verdict, str(ev.verdict)),
    }
    if ev.backend_id:
        out["backend"] = {"id": ev.backend_id, "address": addr(ev.backend),
                          "port": L.from_be16(ev.backend_port)}
    return out


def text_line(e: dict[str, Any]) -> str:
    c = e["client"]
    client = (f"netns {c['netnsCookie']}" if "netnsCookie" in c
              else join_host_port(c["address"], c["port"]))
    fe = join_host_port(e["frontend"]["address"], e["frontend"]["port"])
    be = e["backend"]
    target = join_host_port(be["address"], be["port"]) if be else "-"
    clock = e["time"][11:26]
    return (f"{clock} {e['origin']:6} {e['protocol']:4} {client:>24} -> {fe}/{e['protocol']} "
            f"({e['service'] or 'id ' + str(e['revNatId'])}) => {target} {e['verdict']}")


def matcher(args: argparse.Namespace) -> Callable[[dict[str, Any]], bool]:
    def service_ok(e: dict[str, Any]) -> bool:
        if not args.service:
            return True
        name = e["service"] or ""
        fe = join_host_port(e["frontend"]["address"], e["frontend"]["port"])
        for want in args.service:
            if want in (name, fe, e["frontend"]["address"]) or name.startswith(want + ":"):
                return True
            if "/" not in want and name.split("/", 1)[-1].split(":")[0] == want:
                return True
        return False

    def backend_ok(e: dict[str, Any]) -> bool:
        if not args.backend:
            return True
        be = e["backend"]
        if not be:
            return False
        return any(want in (be["address"], join_host_port(be["address"], be["port"]))
                   for want in args.backend)

    def verdict_ok(e: dict[str, Any]) -> bool:
        return not args.verdict or e["verdict"] in args.verdict

    return lambda e: service_ok(e) and backend_ok(e) and verdict_ok(e)


def run(args: argparse.Namespace) -> int:
    from pyagent.dataplanes.ebpf import events

    try:
        listener = events.Listener(args.bpffs)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"pyagent monitor: {exc}", file=sys.stderr)
        return 1
    # SIGTERM ends the loop like Ctrl-C does: the slot is always cleared
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    keep = matcher(args)
    seen = 0
    names: dict[int, str] = service_names(args.bpffs)
    names_at = time.monotonic()
    deadline = time.monotonic() + args.duration if args.duration else None
    print(f"listening on {args.bpffs} (slot {listener.slot}); Ctrl-C to stop",
          file=sys.stderr, flush=True)
    try:
        while args.count is None or seen < args.count:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = min(1.0, deadline - now) if deadline is not None else 1.0
            batch = listener.events(wait)
            if batch and (now - names_at > NAMES_REFRESH
                          or any(ev.rev_nat_id not in names for ev in batch)):
                names, names_at = service_names(args.bpffs), now
            for ev in batch:
                e = decode(ev, names)
                if not keep(e):
                    continue
                print(json.dumps(e) if args.json else text_line(e), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return 0
    finally:
        lost = listener.lost()
        listener.close()
    if lost:
        print(f"pyagent monitor: {lost} events lost (a ring buffer was full)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor", help="live load-balancing decisions from the kernel",
        description="Stream every load-balancing decision the kernel programs make: "
                    "time, client, frontend, Service, chosen backend and verdict. "
                    "Events are produced only while a monitor runs.",
        epilog="example: pyagent monitor --service default/echo --verdict reject --json")
    p.add_argument("--bpffs", default=DEFAULT_BPFFS)
    p.add_argument("--service", action="append", default=[],
                   help="namespace/name[:port], name, or frontend address[:port] "
                        "(repeatable)")
    p.add_argument("--backend", action="append", default=[],
                   help="backend address or address:port (repeatable)")
    p.add_argument("--verdict", action="append", default=[], choices=sorted(VERDICTS.values()),
                   help="only these verdicts (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=run)
