"""The pinned LB maps decoded into plain JSON data, agent running or not,
without compiling anything (`pyagent maps dump`, `services list`, `status`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from pyagent.core.model import PROTOCOL_NAMES


def _proto(n: int) -> str:
    return PROTOCOL_NAMES.get(n, str(n))


# Slot states besides the backend states: a slot counted by its master that
# is not in the map yet (or any more), and a slot naming a backend id the
# backends map does not hold. Only seen while a sync writes the maps.
SLOT_MISSING, BACKEND_MISSING = "slot-missing", "backend-missing"
READ_ATTEMPTS = 5


def _consistent(entries: dict) -> bool:
    from pyagent.dataplanes.ebpf.reconciler import BACKENDS, SERVICES

    for fam in (4, 6):
        svcs, bes = entries[(SERVICES, fam)], entries[(BACKENDS, fam)]
        for (ip, port, proto, scope, slot), val in svcs.items():
            if slot == 0:
                for i in range(1, val[2] + val[3] + 1):
                    sv = svcs.get((ip, port, proto, scope, i))
                    if sv is None or (sv[0],) not in bes:
                        return False
    return True


def read_consistent(maps: Any) -> dict:
    """The entries, read again (a few times) while a concurrent sync leaves
    a master counting a slot, or a slot naming a backend, that the read did
    not see: the maps are read map by map, not atomically."""
    import time

    from pyagent.dataplanes.ebpf.kernel import read_entries

    for attempt in range(READ_ATTEMPTS):
        entries = read_entries(maps)
        if _consistent(entries):
            break
        time.sleep(0.005 * (attempt + 1))
    return entries


def _slot(i: int, sv: tuple | None, b: tuple | None, states: dict[int, str]) -> dict[str, Any]:
    """One slot, always with the same fields and types (never None)."""
    if sv is None:
        return {"slot": i, "backendId": 0, "address": "", "port": 0, "state": SLOT_MISSING}
    if b is None:
        return {"slot": i, "backendId": sv[0], "address": "", "port": 0,
                "state": BACKEND_MISSING}
    return {"slot": i, "backendId": sv[0], "address": b[0], "port": b[1],
            "state": states.get(b[3], str(b[3]))}


def dump(bpffs: str) -> dict[str, Any]:
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import socket_lb
    from pyagent.dataplanes.ebpf.reconciler import BACKENDS, REVNAT, SERVICES

    maps = socket_lb.open_pinned_maps(bpffs)
    try:
        entries = read_consistent(maps)
        sizes = {name: {"maxEntries": m.max_entries} for name, m in maps.all().items()}
    finally:
        maps.close()
    services, backends, revnat = [], [], []
    states = {s.value: s.name.lower() for s in L.BackendState}
    for fam in (4, 6):
        svcs, bes = entries[(SERVICES, fam)], entries[(BACKENDS, fam)]
        for (ip, port, proto, scope, slot), val in svcs.items():
            if slot:
                continue
            _, aff, count, qcount, rev_id, flags, alg = val
            slots = []
            for i in range(1, count + qcount + 1):
                sv = svcs.get((ip, port, proto, scope, i))
                slots.append(_slot(i, sv, bes.get((sv[0],)) if sv else None, states))
            services.append({
                "frontend": {"address": ip, "port": port, "protocol": _proto(proto),
                             "scope": L.SCOPE_NAMES.get(scope, str(scope))},
                "revNatId": rev_id, "count": count, "qcount": qcount,
                "flags": [f.name for f in L.ServiceFlag if flags & f],
                "algorithm": L.Algorithm(alg).name.lower(), "affinityTimeout": aff,
                "backends": slots})
        for (bid,), (bip, bport, bproto, state, bflags, zone) in bes.items():
            backends.append({"id": bid, "address": bip, "port": bport, "protocol": _proto(bproto),
                             "state": states.get(state, str(state)),
                             "local": bool(bflags & L.BACKEND_F_LOCAL), "zone": zone})
        for (rid,), (rip, rport) in entries[(REVNAT, fam)].items():
            revnat.append({"id": rid, "address": rip, "port": rport})
        for name in (f"lb{fam}_services", f"lb{fam}_backends", f"lb{fam}_revnat"):
            m = {f"lb{fam}_services": svcs, f"lb{fam}_backends": bes,
                 f"lb{fam}_revnat": entries[(REVNAT, fam)]}[name]
            sizes[name]["entries"] = len(m)

    def addr_key(ip: str) -> tuple:
        a = ipaddress.ip_address(ip)
        return (a.version, a)

    services.sort(key=lambda s: (addr_key(s["frontend"]["address"]), s["frontend"]["port"],
                                 s["frontend"]["protocol"], s["frontend"]["scope"]))
    backends.sort(key=lambda b: b["id"])
    revnat.sort(key=lambda r: r["id"])
    return {"bpffs": bpffs, "layoutVersion": L.LAYOUT_VERSION, "services": services,
            "backends": backends, "revNat": revnat, "maps": sizes}
