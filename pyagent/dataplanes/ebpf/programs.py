"""The socket load balancer's kernel objects: compile bpf_src/sock_lb.c,
pin its maps, attach its eight cgroup hooks through pinned links, and
remove all of it again.

bpffs layout (under the agent's --bpffs directory):
    maps/<name>_v<layout>   the LB maps (kept across restarts and upgrades
                            of the programs; a layout change gets new names)
    links/<program>         one cgroup link per hook; a restarted agent
                            adopts them and swaps programs atomically
    progs/<program>         the programs of the last load, pinned by the
                            compiling child process (see load_out_of_process)
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpf import bpffs as fs
from ebpf import cgroup as cg
from ebpf import compiler, libbpf
from ebpf.maps import Map
from pyagent.dataplanes.ebpf import layout

log = logging.getLogger(__name__)

# The C sources: the checkout's bpf_src/, or PYAGENT_BPF_SRC (container images).
BPF_SRC_DIR = os.environ.get("PYAGENT_BPF_SRC") or str(
    Path(__file__).resolve().parents[3] / "bpf_src")
SOURCE = os.path.join(BPF_SRC_DIR, "sock_lb.c")
PROGS_SUBDIR = "progs"


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

    def defines(self) -> dict[str, int]:
        return {
            "LB_SERVICE_MAP_MAX": self.services,
            "LB_BACKEND_MAP_MAX": self.backends,
            "LB_REVNAT_MAP_MAX": self.revnat,
            "LB_SOCK_REVNAT_MAP_MAX": self.sock_revnat,
            "LB_AFFINITY_MAP_MAX": self.affinity,
            "LB_STATS_MAP_MAX": self.stats,
            "LB_BACKEND_STATS_MAX": self.backend_stats,
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
    lb_sk_backend: Map[ctypes.c_int, ctypes.c_uint32]

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


def defines(bpffs: str | None, capacities: Capacities | None = None) -> dict[str, Any]:
    """-D defines for sock_lb.c; bpffs None gives unpinned private maps."""
    out: dict[str, Any] = dict((capacities or Capacities()).defines())
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
                      ) -> list[tuple[str, str]]:
    """Current-version pins (of `specs`, default the LB maps) whose type or
    key/value sizes differ from the layout (BCC would reuse them blindly):
    [(path, why)]."""
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
        if have != want:
            out.append((path, f"(type, key, value) = {have}, layout wants {want}"))
    return out


def check_pinned_maps(bpffs: str, specs: dict[str, layout.MapSpec] | None = None) -> None:
    """Refuse incompatible pinned maps (see incompatible_pins)."""
    for path, why in incompatible_pins(bpffs, specs):
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

    def __init__(self, bpf: Any, prog_fds: dict[str, int], maps: LBMaps):
        self.bpf = bpf
        self.prog_fds = prog_fds
        self.maps = maps

    def close(self) -> None:
        """Drop this process's handles; pinned maps and links stay."""
        self.maps.close()
        if self.bpf is not None:
            self.bpf.cleanup()
        else:  # fds of pinned programs opened by load_out_of_process
            for fd in self.prog_fds.values():
                os.close(fd)


def load(bpffs: str, capacities: Capacities | None = None) -> SockLB:
    """Compile and load the socket LB; create or reuse the pinned maps."""
    fs.ensure(bpffs)
    os.makedirs(maps_dir(bpffs), exist_ok=True)
    check_pinned_maps(bpffs)
    b = compiler.compile_file(SOURCE, [BPF_SRC_DIR], defines(bpffs, capacities))
    try:
        prog_fds = {
            h.func: compiler.load_prog(
                b, h.func, h.prog_type, int(h.attach_type)
            )
            for h in HOOKS
        }
        maps = open_pinned_maps(bpffs)
    except BaseException:
        b.cleanup()
        raise
    return SockLB(b, prog_fds, maps)


def pin_programs(lb: SockLB, bpffs: str) -> None:
    for h in HOOKS:
        path = prog_pin_path(bpffs, h)
        fs.unpin(path)  # the previous load's program lives on in its links
        fs.pin(lb.prog_fds[h.func], path)


def load_out_of_process(bpffs: str) -> SockLB:
    """Compile and load in a child process that pins the programs, then open
    the pins here: BCC and LLVM (about 140 MB of RSS) never enter the agent,
    and a compiler crash cannot take the agent down."""
    fs.ensure(bpffs)
    res = subprocess.run([sys.executable, "-m", __name__, "--bpffs", bpffs],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"loading the socket LB failed:\n{res.stderr.strip()}")
    for line in res.stderr.splitlines():
        log.warning("%s", line)
    prog_fds: dict[str, int] = {}
    try:
        for h in HOOKS:
            prog_fds[h.func] = libbpf.obj_get(prog_pin_path(bpffs, h))
        maps = open_pinned_maps(bpffs)
    except BaseException:
        for fd in prog_fds.values():
            os.close(fd)
        raise
    return SockLB(None, prog_fds, maps)


def attach(lb: SockLB, bpffs: str, cgroup: str) -> dict[str, bool]:
    """Attach every hook to cgroup via links pinned under <bpffs>/links.

    Links already pinned for this cgroup are updated in place (hitless
    restart). Returns {program: adopted an existing link}."""
    return {
        h.func: cg.attach(lb.prog_fds[h.func], cgroup, int(h.attach_type),
                          link_pin_path(bpffs, h))
        for h in HOOKS
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
    for sub in (links_dir(bpffs), maps_dir(bpffs), os.path.join(bpffs, PROGS_SUBDIR)):
        fs.remove_empty_dirs(sub)
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

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bpffs", required=True)
    bpffs = ap.parse_args().bpffs
    # An incompatible map under the current name is replaced deliberately and
    # loudly; its entries are rewritten by the next full sync.
    for path, why in incompatible_pins(bpffs) if os.path.isdir(maps_dir(bpffs)) else []:
        print(f"replacing incompatible pinned map {path}: {why}", file=sys.stderr)
        fs.unpin(path)
    lb = load(bpffs)
    try:
        pin_programs(lb, bpffs)
    finally:
        lb.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
