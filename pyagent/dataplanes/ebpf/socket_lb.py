"""The socket load balancer's kernel objects: compile bpf_src/sock_lb.c,
pin its maps, attach its eight cgroup hooks through pinned links, and
remove all of it again.

bpffs layout (under the agent's --bpffs directory):
    maps/<name>_v<layout>   the LB maps (kept across restarts and upgrades
                            of the programs; a layout change gets new names)
    links/<program>         one cgroup link per hook; a restarted agent
                            adopts them and swaps programs atomically
    attached/<program>@<cgroup>  kernels without cgroup links: the program
                            attached with BPF_PROG_ATTACH (see Variant)
    progs/<program>         the programs of the last load, pinned by the
                            compiling child process (see load_out_of_process)
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpf import bpffs as fs
from ebpf import cgroup as cg
from ebpf import compiler, libbpf
from ebpf import probe as kprobe
from ebpf.maps import Map
from pyagent.dataplanes.ebpf import bpf_sources, layout, loader

log = logging.getLogger(__name__)

# The C sources: PYAGENT_BPF_SRC, the checkout's bpf_src/, or the installed copy.
BPF_SRC_DIR = bpf_sources.directory()
SOURCE = os.path.join(BPF_SRC_DIR, "sock_lb.c")
PROGS_SUBDIR = "progs"
LEGACY_SUBDIR = "attached"
# Where the loader records the variant it built, for `pyagent status`.
RUN_DIR = Path(os.environ.get("PYAGENT_RUN_DIR", "/run/pyagent"))


PROG_TYPE_CGROUP_SOCK = 9


@dataclass(frozen=True)
class Hook:
    func: str  # function in sock_lb.c, also the kernel program name
    attach_type: cg.AttachType
    prog_type: int = compiler.PROG_TYPE_CGROUP_SOCK_ADDR


HOOKS: tuple[Hook, ...] = (
    Hook("lb4_connect", cg.AttachType.CGROUP_INET4_CONNECT),
    Hook("lb4_sendmsg", cg.AttachType.CGROUP_UDP4_SENDMSG),
    Hook("lb4_recvmsg", cg.AttachType.CGROUP_UDP4_RECVMSG),
    Hook("lb4_getpeername", cg.AttachType.CGROUP_INET4_GETPEERNAME),
    Hook("lb6_connect", cg.AttachType.CGROUP_INET6_CONNECT),
    Hook("lb6_sendmsg", cg.AttachType.CGROUP_UDP6_SENDMSG),
    Hook("lb6_recvmsg", cg.AttachType.CGROUP_UDP6_RECVMSG),
    Hook("lb6_getpeername", cg.AttachType.CGROUP_INET6_GETPEERNAME),
    # gives a least-conn connection back to its backend's count
    Hook("lb_sock_release", cg.AttachType.CGROUP_INET_SOCK_RELEASE, PROG_TYPE_CGROUP_SOCK),
)


GETPEERNAME_HOOKS = ("lb4_getpeername", "lb6_getpeername")
RECVMSG_HOOKS = ("lb4_recvmsg", "lb6_recvmsg")
RELEASE_HOOKS = ("lb_sock_release",)


@dataclass(frozen=True)
class Variant:
    """The socket LB as built for one kernel: -D defines, the hooks loaded
    and attached, how they attach, and what degrades (README, "Kernels")."""

    defines: dict[str, int]
    hooks: tuple[Hook, ...]
    legacy_attach: bool
    degraded: tuple[str, ...]
    features: kprobe.Features

    def describe(self) -> dict[str, Any]:
        return {"defines": self.defines, "hooks": [h.func for h in self.hooks],
                "attach": "prog_attach" if self.legacy_attach else "link",
                "degraded": list(self.degraded),
                "missing": self.features.missing(),
                "overridden": list(self.features.overridden)}


def choose_variant(f: kprobe.Features) -> Variant:
    """The socket LB this kernel can run. Only a kernel without the connect
    and sendmsg hooks themselves (before 4.18) has none."""
    if not (f.connect and f.sendmsg and f.socket_cookie):
        raise RuntimeError("this kernel lacks the cgroup connect/sendmsg hooks or "
                           "bpf_get_socket_cookie there: no socket load balancing possible")
    release = f.sock_release and f.sk_storage and f.sk_storage_map
    skip: set[str] = set()
    degraded = []
    if not f.set_retval:
        degraded.append("no bpf_set_retval: connect()/sendmsg() to a Service without usable "
                        "endpoints fails at once with EPERM instead of ECONNREFUSED / ETIMEDOUT")
    if not f.getpeername:
        skip.update(GETPEERNAME_HOOKS)
        degraded.append("no getpeername hooks: getpeername() on a socket connected through a "
                        "Service shows the backend's address, not the Service's")
    if not f.recvmsg:
        skip.update(RECVMSG_HOOKS)
        degraded.append("no recvmsg hooks: recvfrom() on an unconnected UDP socket shows the "
                        "backend's address, not the Service's")
    if not release:
        skip.update(RELEASE_HOOKS)
        degraded.append("no sock_release hook or socket storage: least-conn Services pick "
                        "at random at the socket hooks")
    if not f.netns_cookie:
        degraded.append("no bpf_get_netns_cookie at the socket hooks: ClientIP session "
                        "affinity is not kept for pods and the node (random pick), and the "
                        "socket LB cannot leave pods out (hostNamespaceOnly, opt-outs)")
    if not f.cgroup_links:
        degraded.append("no cgroup BPF links: hooks are attached with BPF_PROG_ATTACH; a "
                        "restart attaches the new programs before detaching the old ones")
    defines = {"LB_HAVE_SET_RETVAL": int(f.set_retval),
               "LB_HAVE_NETNS_COOKIE": int(f.netns_cookie),
               "LB_HAVE_SOCK_RELEASE": int(release)}
    return Variant(defines, tuple(h for h in HOOKS if h.func not in skip),
                   not f.cgroup_links, tuple(degraded), f)


@functools.cache
def kernel_variant() -> Variant:
    """choose_variant() for the running kernel, probed once per process."""
    return choose_variant(kprobe.probe())


def variant_record_path(bpffs: str) -> Path:
    digest = hashlib.sha256(os.path.realpath(bpffs).encode()).hexdigest()[:16]
    return RUN_DIR / f"datapath-{digest}.json"


def record_variant(bpffs: str, variant: Variant) -> None:
    """Log the variant and leave it where `pyagent status` finds it."""
    log.info("socket LB variant: %s", json.dumps(variant.describe()["defines"]))
    for why in variant.degraded:
        log.warning("kernel fallback: %s", why)
    path = variant_record_path(bpffs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(variant.describe()))
    except OSError as e:  # status only; the datapath runs either way
        log.warning("cannot record the datapath variant in %s: %s", path, e)


def read_variant(bpffs: str) -> dict[str, Any] | None:
    try:
        return json.loads(variant_record_path(bpffs).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Capacities:
    """max_entries of maps created by this load (existing pins keep theirs)."""

    services: int = layout.SERVICE_MAP_MAX
    backends: int = layout.BACKEND_MAP_MAX
    revnat: int = layout.REVNAT_MAP_MAX
    sock_revnat: int = layout.SOCK_REVNAT_MAP_MAX
    affinity: int = layout.AFFINITY_MAP_MAX
    stats: int = layout.STATS_MAP_MAX
    backend_stats: int = layout.BACKEND_STATS_MAX

    @classmethod
    def for_lb_map_max(cls, n: int | None, rev_nat: int | None = None) -> Capacities:
        """The sizes `pyagent.bpfLbMapMax` / --bpf-lb-map-max (n) and
        `pyagent.bpfLbRevNatMapMax` / --bpf-lb-rev-nat-map-max (rev_nat) give
        (None: the header's defaults). n sizes every map that holds Service
        state; the per-socket LRU maps (socket rev-NAT, affinity) keep theirs.
        rev_nat sizes the rev-NAT maps and the per-CPU per-service arrays
        indexed by rev-NAT id (ids 1..rev_nat): those cost 32 bytes per id
        *per CPU*, so without rev_nat they stop at 65,536 entries."""
        caps = cls() if n is None else cls(
            services=n, backends=n, revnat=min(n, 0x10000), stats=min(n, 0xFFFF) + 1,
            backend_stats=min(n, layout.BACKEND_STATS_MAX))
        if rev_nat is not None:
            caps = dataclasses.replace(caps, revnat=rev_nat, stats=rev_nat + 1)
        return caps

    def defines(self) -> dict[str, int]:
        return {define: getattr(self, name) for name, define in CAPACITY_DEFINES.items()}

    @classmethod
    def from_defines(cls, values: dict[str, int]) -> Capacities:
        by_define = {d: n for n, d in CAPACITY_DEFINES.items()}
        return cls(**{by_define[d]: v for d, v in values.items()})


CAPACITY_DEFINES = {  # Capacities field -> the -D define of lb_types.h
    "services": "LB_SERVICE_MAP_MAX",
    "backends": "LB_BACKEND_MAP_MAX",
    "revnat": "LB_REVNAT_MAP_MAX",
    "sock_revnat": "LB_SOCK_REVNAT_MAP_MAX",
    "affinity": "LB_AFFINITY_MAP_MAX",
    "stats": "LB_STATS_MAP_MAX",
    "backend_stats": "LB_BACKEND_STATS_MAX",
}


@dataclass
class LBMaps:
    """Typed handles on the LB maps (own fds; close() when done)."""

    lb4_services: Map[layout.Lb4Key, layout.LbService]
    lb6_services: Map[layout.Lb6Key, layout.LbService]
    lb4_backends: Map[ctypes.c_uint32, layout.Lb4Backend]
    lb6_backends: Map[ctypes.c_uint32, layout.Lb6Backend]
    lb4_revnat: Map[ctypes.c_uint16, layout.Lb4ReverseNat]
    lb6_revnat: Map[ctypes.c_uint16, layout.Lb6ReverseNat]
    lb4_sockrev: Map[layout.Lb4SockKey, layout.Lb4SockVal]
    lb6_sockrev: Map[layout.Lb6SockKey, layout.Lb6SockVal]
    lb_affinity: Map[layout.LbAffinityKey, layout.LbAffinityVal]
    lb_svc_stats: Map[ctypes.c_uint32, layout.LbSvcStats]
    lb_be_stats: Map[ctypes.c_uint32, ctypes.c_uint64]
    lb_aff_match: Map[layout.LbAffinityMatchKey, ctypes.c_uint8]
    lb_rr: Map[ctypes.c_uint32, ctypes.c_uint32]
    lb_be_conns: Map[ctypes.c_uint32, ctypes.c_uint64]
    lb_sock_cfg: Map[ctypes.c_uint32, layout.LbSockConfig]
    lb_sock_skip: Map[ctypes.c_uint64, ctypes.c_uint8]
    lb_sk_backend: Map[ctypes.c_int, ctypes.c_uint32]
    lb_monitor: Map[ctypes.c_uint32, layout.LbMonitor]
    lb_mon_ring: Map[layout.NoValue, layout.NoValue]
    lb_mon_rings: Map[ctypes.c_uint32, ctypes.c_uint32]

    def all(self) -> dict[str, Map]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def close(self) -> None:
        for m in self.all().values():
            m.close()


def maps_dir(bpffs: str) -> str:
    return os.path.join(bpffs, layout.MAPS_SUBDIR)


def links_dir(bpffs: str) -> str:
    return os.path.join(bpffs, layout.LINKS_SUBDIR)


def prog_pin_path(bpffs: str, hook: Hook) -> str:
    return os.path.join(bpffs, PROGS_SUBDIR, hook.func)


def link_pin_path(bpffs: str, hook: Hook) -> str:
    return os.path.join(links_dir(bpffs), hook.func)


def defines(bpffs: str | None, capacities: Capacities | None = None,
            variant: Variant | None = None) -> dict[str, Any]:
    """-D defines for sock_lb.c; bpffs None gives unpinned private maps;
    variant defaults to this kernel's."""
    out: dict[str, Any] = dict((capacities or Capacities()).defines())
    out.update((variant or kernel_variant()).defines)
    out["LB_EXPECTED_LAYOUT_VERSION"] = layout.LAYOUT_VERSION
    if bpffs is None:
        out["LB_NO_PIN"] = None
    else:
        out["PIN_DIR"] = maps_dir(os.path.abspath(bpffs))
    return out


def source_text(capacities: Capacities | None = None) -> str:
    """The program as BCC compiles it, for `pyagent bpf print`. Creates only
    private maps that vanish with this call; pins nothing."""
    return compiler.preprocess(SOURCE, [BPF_SRC_DIR], defines(None, capacities))


def incompatible_pins(bpffs: str, specs: dict[str, layout.MapSpec] | None = None,
                      sizes: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Current-version pins (of `specs`, default the LB maps) whose type or
    key/value sizes differ from the layout (BCC would reuse them blindly), or
    whose max_entries differ from `sizes` (capacity -D defines, e.g.
    Capacities().defines()): [(path, why)]."""
    out = []
    for spec in (specs if specs is not None else layout.MAPS).values():
        path = spec.pin_path(bpffs)
        if not os.path.exists(path):
            continue
        fd = libbpf.obj_get(path)
        try:
            info = libbpf.map_info(fd)
        finally:
            os.close(fd)
        want = (spec.map_type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))
        have = (info.type, info.key_size, info.value_size)
        size = (sizes or {}).get(spec.capacity_define)
        if have != want:
            out.append((path, f"(type, key, value) = {have}, layout wants {want}"))
        elif size is not None and info.max_entries != size:
            # another size is another layout: BCC would reuse the pin as it is
            out.append((path, f"max_entries {info.max_entries}, configured {size}"))
    return out


def all_pinned(bpffs: str, specs: dict[str, layout.MapSpec]) -> bool:
    """Every map of `specs` has its pin: a load then creates none, and can
    compile without debug info (compiler.compile_file)."""
    return all(os.path.exists(spec.pin_path(bpffs)) for spec in specs.values())


def check_pinned_maps(bpffs: str, specs: dict[str, layout.MapSpec] | None = None,
                      sizes: dict[str, Any] | None = None) -> None:
    """Refuse incompatible pinned maps (see incompatible_pins)."""
    for path, why in incompatible_pins(bpffs, specs, sizes):
        raise RuntimeError(f"pinned map {path} has {why}; "
                           "remove it (pyagent cleanup) or bump LB_LAYOUT_VERSION")


def stale_version_pins(bpffs: str) -> list[str]:
    """Pins of our maps from another layout version (<name>_v<N>)."""
    names = "|".join(re.escape(n) for n in layout.MAPS)
    pattern = re.compile(rf"({names})_v(\d+)")
    return [p for p in fs.list_pins(maps_dir(bpffs))
            if (m := pattern.fullmatch(os.path.basename(p)))
            and int(m.group(2)) != layout.LAYOUT_VERSION]


class SockLB:
    """A compiled and loaded socket LB: program fds and typed maps."""

    def __init__(self, bpf: Any, prog_fds: dict[str, int], maps: LBMaps,
                 variant: Variant | None = None):
        self.bpf = bpf
        self.prog_fds = prog_fds
        self.maps = maps
        self.variant = variant or kernel_variant()

    def close(self) -> None:
        """Drop this process's handles; pinned maps and links stay."""
        self.maps.close()
        if self.bpf is not None:
            self.bpf.cleanup()
        else:  # fds of pinned programs opened by load_out_of_process
            for fd in self.prog_fds.values():
                os.close(fd)


def load(bpffs: str, capacities: Capacities | None = None,
         variant: Variant | None = None) -> SockLB:
    """Compile and load the socket LB (the variant for this kernel unless
    given); create or reuse the pinned maps."""
    variant = variant or kernel_variant()
    fs.ensure(bpffs)
    os.makedirs(maps_dir(bpffs), exist_ok=True)
    check_pinned_maps(bpffs, sizes=(capacities or Capacities()).defines())
    b = compiler.compile_file(SOURCE, [BPF_SRC_DIR], defines(bpffs, capacities, variant),
                              debug_info=not all_pinned(bpffs, layout.MAPS))
    try:
        prog_fds = {
            h.func: compiler.load_prog(
                b, h.func, h.prog_type, int(h.attach_type)
            )
            for h in variant.hooks
        }
        maps = open_pinned_maps(bpffs)
    except BaseException:
        b.cleanup()
        raise
    return SockLB(b, prog_fds, maps, variant)


def pin_programs(lb: SockLB, bpffs: str) -> None:
    for h in lb.variant.hooks:
        path = prog_pin_path(bpffs, h)
        fs.unpin(path)  # the previous load's program lives on in its links
        fs.pin(lb.prog_fds[h.func], path)


def load_out_of_process(bpffs: str, capacities: Capacities | None = None) -> SockLB:
    """Compile and load in a child process that pins the programs, then open
    the pins here: BCC and LLVM (about 140 MB of RSS) never enter the agent,
    and a compiler crash cannot take the agent down."""
    loader.run_child(__name__, bpffs, (capacities or Capacities()).defines(), "the socket LB")
    variant = kernel_variant()  # the child probed the same kernel
    record_variant(bpffs, variant)
    prog_fds: dict[str, int] = {}
    try:
        for h in variant.hooks:
            prog_fds[h.func] = libbpf.obj_get(prog_pin_path(bpffs, h))
        maps = open_pinned_maps(bpffs)
    except BaseException:
        for fd in prog_fds.values():
            os.close(fd)
        raise
    return SockLB(None, prog_fds, maps, variant)


def legacy_dir(bpffs: str) -> str:
    return os.path.join(bpffs, LEGACY_SUBDIR)


def attach(lb: SockLB, bpffs: str, cgroup: str) -> dict[str, bool]:
    """Attach the variant's hooks to cgroup via links pinned under
    <bpffs>/links (or, without cgroup links, with BPF_PROG_ATTACH recorded
    under <bpffs>/attached).

    Links already pinned for this cgroup are updated in place (hitless
    restart). Returns {program: adopted an existing attachment}."""
    if lb.variant.legacy_attach:
        os.makedirs(legacy_dir(bpffs), exist_ok=True)
        return {
            h.func: cg.attach_legacy(lb.prog_fds[h.func], cgroup, int(h.attach_type),
                                     cg.legacy_record(legacy_dir(bpffs), h.func, cgroup))
            for h in lb.variant.hooks
        }
    return {
        h.func: cg.attach(lb.prog_fds[h.func], cgroup, int(h.attach_type),
                          link_pin_path(bpffs, h))
        for h in lb.variant.hooks
    }


def detach_all(bpffs: str, cgroup: str | None = None) -> int:
    """Detach and unpin the links under <bpffs>/links (only those on cgroup
    when given). Returns how many; a second call returns 0."""
    want = cg.cgroup_id(cgroup) if cgroup is not None and os.path.exists(cgroup) else None
    n = 0
    for path in fs.list_pins(links_dir(bpffs)):
        if want is not None:
            try:
                target = cg.link_target(path).cgroup_id
            except OSError:
                target = None
            if target not in (want, 0):  # 0: its cgroup is gone, always stale
                continue
        n += cg.detach(path)
    types = {h.func: int(h.attach_type) for h in HOOKS}
    mine = os.path.realpath(cgroup) if cgroup is not None else None
    for path, func, where in cg.legacy_records(legacy_dir(bpffs)):
        if func in types and mine in (None, os.path.realpath(where)):
            n += cg.detach_legacy(path, where, types[func])
    return n


def cleanup(bpffs: str) -> int:
    """Remove every link and map pin this module made under bpffs, and the
    then-empty directories. Returns how many pins went; a second call is a
    no-op returning 0. Mounts are left alone."""
    if not os.path.isdir(bpffs):
        return 0
    n = detach_all(bpffs)
    for path in fs.list_pins(maps_dir(bpffs)) + fs.list_pins(os.path.join(bpffs, PROGS_SUBDIR)):
        n += fs.unpin(path)
    for sub in (links_dir(bpffs), legacy_dir(bpffs), maps_dir(bpffs),
                os.path.join(bpffs, PROGS_SUBDIR)):
        fs.remove_empty_dirs(sub)
    variant_record_path(bpffs).unlink(missing_ok=True)
    return n


def open_pinned(bpffs: str, specs: dict[str, layout.MapSpec], what: str) -> dict[str, Map]:
    """Typed handles on pinned maps, without compiling anything. FileNotFoundError
    names the missing pins; ValueError reports a layout mismatch."""
    missing = [s.pin_path(bpffs) for s in specs.values() if not os.path.exists(s.pin_path(bpffs))]
    if missing:
        raise FileNotFoundError(f"no pinned {what} maps: {', '.join(missing)}")
    opened: dict[str, Map] = {}
    try:
        for name, spec in specs.items():
            opened[name] = Map.open_pinned(spec.pin_path(bpffs), spec.key, spec.value)
    except BaseException:
        for m in opened.values():
            m.close()
        raise
    return opened


def open_pinned_maps(bpffs: str) -> LBMaps:
    """The LB maps (for `pyagent maps dump` and the control plane)."""
    return LBMaps(**open_pinned(bpffs, layout.MAPS, "LB"))


def attached_programs(cgroup: str) -> dict[str, list[int]]:
    """{hook program name: ids of programs attached at its attach type}."""
    return {h.func: cg.query(cgroup, int(h.attach_type)) for h in HOOKS}


def main() -> int:
    """The child of load_out_of_process: compile, load, pin, exit."""
    import argparse

    loader.child_started(loader.NICE_SOCKET_LB)

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bpffs", required=True)
    ap.add_argument("--size", action="append", default=[], metavar="DEFINE=N",
                    help="a capacity -D define (Capacities field), e.g. LB_SERVICE_MAP_MAX=1024")
    args = ap.parse_args()
    bpffs = args.bpffs
    caps = Capacities.from_defines({d: int(v) for d, v in
                                    (item.split("=", 1) for item in args.size)})
    # An incompatible map under the current name (another layout or size) is
    # replaced deliberately and loudly; the next full sync rewrites its entries.
    for path, why in (incompatible_pins(bpffs, sizes=caps.defines())
                      if os.path.isdir(maps_dir(bpffs)) else []):
        print(f"replacing incompatible pinned map {path}: {why}", file=sys.stderr)
        fs.unpin(path)
    lb = load(bpffs, caps)
    try:
        pin_programs(lb, bpffs)
    finally:
        lb.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
