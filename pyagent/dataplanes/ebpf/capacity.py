"""What the eBPF dataplane's maps and id spaces can hold, and how much of it
is in use: the reconciler's ledger (pure).

A resource is (kind, family): a map the agent writes (services, backends,
rev-NAT, affinity membership, Maglev tables, source ranges) or an id space
(rev-NAT ids, backend ids; family 0, shared by IPv4 and IPv6). Limits and why:

- services / backends / rev-NAT / affinity-membership / Maglev / source-range
  maps: their max_entries (``pyagent.bpfLbMapMax``, else bpf_src/lb_types.h).
  Kernel hash maps and LPM tries refuse a new key once full.
- rev-NAT ids: 1..n-1 where n is the size of the per-service counter and
  round-robin arrays they index (``pyagent.bpfLbRevNatMapMax`` + 1, else
  65,536). The id is a u32 in every struct that carries it (services master
  entry, socket rev-NAT, conntrack, affinity and source-range keys; 0 means
  none); those arrays are per-CPU, which is why they are not simply as large
  as the services map.
- backend ids: 1..2^32-1 (u32); never the bound in practice, the backends
  maps are.
- slots per frontend: 65535 (the slot number and the counts are u16).

Additions count at once; releases count only once the deletes that free
them have run (`settle`), because every sync writes before it deletes
(make-before-break): the maps hold the old and the new entries at the same
moment, and that peak is what must fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SERVICES, BACKENDS, REVNAT = "services", "backends", "revnat"
AFFMATCH = "affmatch"  # family-less (0): backend id, rev-NAT id, scope -> 1
MAGLEV = "maglev"  # family-less: rev-NAT id -> Maglev table (TC path)
SRCRANGE = "srcrange"  # (rev-NAT id, CIDR) -> allowed (TC path)
REV_IDS, BACKEND_IDS = "rev_ids", "backend_ids"  # id spaces, family 0
MAX_REV_ID = 0xFFFFFFFF
MAX_BACKEND_ID = 0xFFFFFFFF

Resource = tuple[str, int]

MAP_NAMES = {SERVICES: "lb{}_services", BACKENDS: "lb{}_backends", REVNAT: "lb{}_revnat",
             AFFMATCH: "lb_aff_match", MAGLEV: "lb_maglev", SRCRANGE: "lb{}_srcrange"}
UNITS = {SERVICES: "entries", BACKENDS: "entries", REVNAT: "entries",
         AFFMATCH: "entries", MAGLEV: "tables", SRCRANGE: "entries",
         REV_IDS: "rev-NAT ids", BACKEND_IDS: "backend ids"}
# which map an id space is reported under
ID_MAPS = {REV_IDS: REVNAT, BACKEND_IDS: BACKENDS}

# Refusal reasons (the `reason` label of pyagent_services_refused).
MAP_FULL = "map_full"
FRONTEND_CONFLICT = "frontend_conflict"
TOO_MANY_BACKENDS = "too_many_backends"


def map_name(kind: str, family: int) -> str:
    return MAP_NAMES[ID_MAPS.get(kind, kind)].format(family or 4)


class CapacityError(Exception):
    """A Service the maps cannot hold; nothing of it was written."""

    def __init__(self, message: str, reason: str = MAP_FULL, map: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.map = map


class Ledger:
    def __init__(self, limits: Mapping[Resource, int]) -> None:
        self.limits = dict(limits)
        self.limits.setdefault((REV_IDS, 0), MAX_REV_ID)
        self.limits.setdefault((BACKEND_IDS, 0), MAX_BACKEND_ID)
        self.used: dict[Resource, int] = {}
        self._pending: dict[Resource, int] = {}  # released, deletes not run yet

    def add(self, res: Resource, n: int = 1) -> None:
        self.used[res] = self.used.get(res, 0) + n

    def release(self, res: Resource, n: int = 1) -> None:
        if n:
            self._pending[res] = self._pending.get(res, 0) + n

    def settle(self, kinds: Iterable[str] | None = None) -> bool:
        """The deletes ran: released entries are free again (only those of
        `kinds` when given). Returns whether anything was freed."""
        freed = False
        for res in [r for r in self._pending if kinds is None or r[0] in kinds]:
            n = self._pending.pop(res)
            self.used[res] = self.used.get(res, 0) - n
            freed = freed or n > 0
        return freed

    def set_used(self, res: Resource, n: int) -> None:
        self.used[res] = n
        self._pending.pop(res, None)

    def check(self, need: Mapping[Resource, int], id_family: int = 4) -> None:
        """Raise CapacityError naming the first resource `need` overflows.
        `id_family` names the map an id-space shortage is reported under."""
        for res, n in sorted(need.items()):
            limit = self.limits.get(res)
            if n <= 0 or limit is None:
                continue
            used = self.used.get(res, 0)
            if used + n > limit:
                kind, fam = res
                name = map_name(kind, fam or id_family)
                raise CapacityError(
                    f"{name} full: {used} of {limit} {UNITS[kind]} in use, "
                    f"this Service needs {n} more", MAP_FULL, name)

    def pressure(self) -> dict[str, float]:
        """map name -> fill (1.0: full), the worse of its entries and, for the
        rev-NAT and backends maps, the id space they draw from."""
        out: dict[str, float] = {}
        for (kind, fam), limit in self.limits.items():
            if kind in ID_MAPS or limit <= 0:
                continue
            out[map_name(kind, fam)] = self.used.get((kind, fam), 0) / limit
        for ids, kind in ID_MAPS.items():
            limit = self.limits[(ids, 0)]
            fill = self.used.get((ids, 0), 0) / limit
            for fam in (4, 6):
                name = map_name(kind, fam)
                if name in out:
                    out[name] = max(out[name], fill)
        return out
