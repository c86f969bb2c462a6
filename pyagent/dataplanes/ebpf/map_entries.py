"""`pyagent maps dump --map NAME`: the entries of one pinned map, decoded
(conntrack, session affinity, socket rev-NAT, or any other map of the
layout), with times shown as ages and flags by name."""

from __future__ import annotations

import ctypes
import time
from typing import Any

# Friendly names for groups of maps; any map name of the layout works too.
ALIASES = {
    "conntrack": ("lb4_ct", "lb6_ct"),
    "ct": ("lb4_ct", "lb6_ct"),
    "affinity": ("lb_affinity",),
    "sockrev": ("lb4_sockrev", "lb6_sockrev"),
    "socket-revnat": ("lb4_sockrev", "lb6_sockrev"),
}
# Maps with no entries to list (ring buffers, socket storage, map-in-map).
UNLISTABLE = ("lb_mon_ring", "lb_mon_rings", "lb_sk_backend", "lb_maglev")
STAGES = {0: "ingress", 1: "egress"}
PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


def names() -> list[str]:
    from pyagent.dataplanes.ebpf import layout as L

    return sorted(set(ALIASES) | (set(L.MAPS) | set(L.TC_MAPS)) - set(UNLISTABLE))


def resolve(name: str) -> tuple[str, ...]:
    from pyagent.dataplanes.ebpf import layout as L

    if name in ALIASES:
        return ALIASES[name]
    if name in UNLISTABLE or name not in {**L.MAPS, **L.TC_MAPS}:
        raise ValueError(f"no map {name!r} to dump; choose from: {', '.join(names())}")
    return (name,)


def _decorate(name: str, key: dict[str, Any], value: Any, now: int) -> dict[str, Any]:
    """Readable extras per map kind: ages, flag and stage names."""
    from pyagent.dataplanes.ebpf import layout as L

    entry: dict[str, Any] = {"key": key, "value": value}
    if name.endswith("_ct"):
        key["proto"] = PROTO_NAMES.get(key["proto"], key["proto"])
        key["stage"] = STAGES.get(key["stage"], key["stage"])
        value["flags"] = [f.name for f in L.CtFlag if value["flags"] & f]
        value["expiresIn"] = value.pop("expires") - now
    elif name == "lb_affinity":
        if not key["netns"]:  # the TC path keys on the client's IPv4 address
            key["client"] = L.from_ip4(key["client"] & 0xFFFFFFFF)
        key["netns"] = bool(key["netns"])
        value["age"] = now - value.pop("last_used")
    return entry


def dump_map(bpffs: str, name: str) -> dict[str, Any]:
    """{"map": name, "maps": [{name, maxEntries, entries: [{key, value}]}]}"""
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import socket_lb as programs

    specs = {**L.MAPS, **L.TC_MAPS}
    out = []
    now = int(time.monotonic())  # conntrack and affinity times: CLOCK_MONOTONIC seconds
    for real in resolve(name):
        spec = specs[real]
        opened = programs.open_pinned(bpffs, {real: spec}, real)[real]
        try:
            entries = []
            for k, v in opened.items():
                key = L.to_dict(k) if hasattr(k, "_fields_") else int(k.value)
                if isinstance(v, list):  # per-CPU: the sum and the CPUs
                    val: Any = _sum_percpu(v)
                else:
                    val = L.to_dict(v) if hasattr(v, "_fields_") else int(v.value)
                entries.append(_decorate(real, key, val, now) if isinstance(key, dict)
                               else {"key": key, "value": val})
            out.append({"name": real, "maxEntries": opened.max_entries, "entries": entries})
        finally:
            opened.close()
    return {"bpffs": bpffs, "map": name, "maps": out}


def _sum_percpu(values: list) -> Any:
    if hasattr(values[0], "_fields_"):
        return {f: sum(getattr(v, f) for v in values) for f, _t in values[0]._fields_
                if not f.startswith("pad")}
    return sum(int(v.value) if isinstance(v, ctypes._SimpleCData) else int(v) for v in values)


def _short(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    return " ".join(f"{k}={_short(v) if not isinstance(v, list) else ','.join(map(str, v))}"
                    for k, v in d.items())


def print_table(d: dict[str, Any]) -> None:
    for m in d["maps"]:
        print(f"{m['name']}: {len(m['entries'])} / {m['maxEntries']} entries")
        for e in m["entries"]:
            print(f"  {_short(e['key'])}  =>  {_short(e['value'])}")
