"""The north-south (TC) load balancer's kernel objects: compile
bpf_src/tc_nat.c against the same pinned LB maps as the socket LB, attach
its programs with clsact + direct-action bpf filters, write its node config
and source-range maps, run packets through it (BPF_PROG_TEST_RUN), and
remove all of it again. Tracing (trace --bpf) is in tc_trace.py.

Which program goes where:
    node interfaces (uplinks)   ingress lb_netdev_ingress, egress lb_egress
    host side of pod links      ingress lb_pod_ingress,    egress lb_egress

Filters use one fixed priority/handle and carry the program name, so a
restarted agent replaces them in place (RTM_NEWTFILTER with NLM_F_REPLACE:
no moment without a program) and cleanup finds exactly ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import ipaddress
import logging
import os
import secrets
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ebpf import bpffs as fs
from ebpf import compiler, libbpf
from ebpf.maps import Map
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import loader, map_pins, socket_lb

log = logging.getLogger(__name__)

SOURCE = os.path.join(socket_lb.BPF_SRC_DIR, "tc_nat.c")
PROG_NETDEV_INGRESS = "lb_netdev_ingress"
PROG_POD_INGRESS = "lb_pod_ingress"
PROG_EGRESS = "lb_egress"
PROG_XDP = "lb_xdp_ingress"  # loaded only with xdp=True (xdp.py attaches it)
PROGRAMS = (PROG_NETDEV_INGRESS, PROG_POD_INGRESS, PROG_EGRESS)
OTHER_PROGRAMS = {PROG_XDP: "XDP"}  # same source, other types (vagrant/verifier-baseline)

ROLE_NETDEV, ROLE_POD = "netdev", "pod"
# role -> (ingress program, egress program)
ROLE_PROGRAMS = {
    ROLE_NETDEV: (PROG_NETDEV_INGRESS, PROG_EGRESS),
    ROLE_POD: (PROG_POD_INGRESS, PROG_EGRESS),
}
PARENT_INGRESS, PARENT_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3  # clsact ffff:fff2 / ffff:fff3
FILTER_PRIO = 0xA6E  # ours alone; lower numbers (other tools) run first
FILTER_HANDLE = 1
FILTER_NAME_PREFIX = "pyagent:"
XDP_REFUSED = "XDP program refused: "  # the child's line when only XDP failed
PROGS_SUBDIR = "tc"  # <bpffs>/tc/<program>: the loaded programs, for trace --bpf

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
VERDICTS = {TC_ACT_OK: "PASS", TC_ACT_SHOT: "DROP", TC_ACT_REDIRECT: "REDIRECT"}


@dataclass(frozen=True)
class TcCapacities:
    """max_entries of the TC maps created by a load (pins keep theirs)."""

    ct: int = L.CT_MAP_MAX
    src_range: int = L.SRC_RANGE_MAP_MAX
    maglev: int = L.MAGLEV_MAP_MAX  # services with a Maglev table

    @classmethod
    def for_lb_map_max(cls, n: int | None) -> TcCapacities:
        """Sizes for `pyagent.bpfLbMapMax` (None: the defaults): source
        ranges follow it, Maglev tables (64 KiB each) up to 65,536 of them,
        conntrack (per flow, an LRU) keeps its size."""
        return cls() if n is None else cls(src_range=n, maglev=min(n, 0x10000))

    def defines(self) -> dict[str, int]:
        return {"LB_CT_MAP_MAX": self.ct, "LB_SRC_RANGE_MAP_MAX": self.src_range,
                "LB_MAGLEV_MAP_MAX": self.maglev}


@dataclass
class TcMaps:
    """Typed handles on the TC maps (own fds; close() when done)."""

    lb4_ct: Map[L.Lb4CtKey, L.Lb4CtVal]
    lb6_ct: Map[L.Lb6CtKey, L.Lb6CtVal]
    lb4_srcrange: Map[L.Lb4SrcRangeKey, ctypes.c_uint8]
    lb6_srcrange: Map[L.Lb6SrcRangeKey, ctypes.c_uint8]
    lb_node_config: Map[ctypes.c_uint32, L.LbNodeConfig]
    lb_tc_stats: Map[ctypes.c_uint32, L.LbTcStat]
    lb_maglev_inner: Map[ctypes.c_uint32, ctypes.c_uint32]
    lb_maglev: Map[ctypes.c_uint32, ctypes.c_uint32]  # maglev.sync_tables writes it

    def all(self) -> dict[str, Map]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def close(self) -> None:
        for m in self.all().values():
            m.close()


class TcLB:
    """A compiled and loaded TC load balancer: program fds, its own maps and
    handles on the shared LB maps (services, backends, ...)."""

    def __init__(self, bpf: Any, prog_fds: dict[str, int], maps: TcMaps,
                 lb_maps: socket_lb.LBMaps):
        self.bpf = bpf
        self.prog_fds = prog_fds
        self.maps = maps
        self.lb_maps = lb_maps
        self.xdp_error: str | None = None  # why lb_xdp_ingress did not load, if asked

    def close(self) -> None:
        """Drop this process's handles; pins and attached filters stay."""
        self.maps.close()
        self.lb_maps.close()
        if self.bpf is not None:
            self.bpf.cleanup()
        else:  # fds of pinned programs opened by load_out_of_process
            for fd in self.prog_fds.values():
                os.close(fd)

    def __enter__(self) -> TcLB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def defines(bpffs: str | None, capacities: socket_lb.Capacities | None = None,
            tc_capacities: TcCapacities | None = None, xdp: bool = True,
            pods: bool = True) -> dict[str, Any]:
    """-D defines for tc_nat.c: the socket LB's (same pin directory, so the
    maps are shared) plus the TC capacities and a fresh LB_XDP_MARK (how
    lb_xdp_ingress tells lb_netdev_ingress of the same load that it
    finished a packet). bpffs None: private maps. xdp False leaves
    lb_xdp_ingress out (a fifth of the compile time), pods False
    lb_pod_ingress (a node without pod interfaces: a quarter)."""
    out = socket_lb.defines(bpffs, capacities)
    out.update((tc_capacities or TcCapacities()).defines())
    out["LB_XDP_MARK"] = secrets.randbits(32) | 1
    if not xdp:
        out["LB_NO_XDP"] = None
    if not pods:
        out["LB_NO_POD_INGRESS"] = None
    return out


def programs(pods: bool = True) -> tuple[str, ...]:
    """The SCHED_CLS programs of a load (pods: lb_pod_ingress too)."""
    return PROGRAMS if pods else tuple(p for p in PROGRAMS if p != PROG_POD_INGRESS)


def source_text(capacities: socket_lb.Capacities | None = None,
                tc_capacities: TcCapacities | None = None) -> str:
    """The program as BCC compiles it (`pyagent bpf print`); pins nothing."""
    return compiler.preprocess(SOURCE, [socket_lb.BPF_SRC_DIR],
                               defines(None, capacities, tc_capacities))


def check_pinned_tc_maps(bpffs: str, sizes: dict[str, Any] | None = None) -> None:
    """Refuse pinned TC maps whose type, key/value or max_entries differ."""
    socket_lb.check_pinned_maps(bpffs, L.TC_MAPS, sizes)


def _module_maps(b: Any, specs: dict[str, L.MapSpec]) -> dict[str, Map]:
    """Typed handles (dup()ed fds) on a compiled module's tables: works for
    pinned and private maps alike. The fd comes from libbcc directly, since
    BCC's Python tables do not know every map type (e.g. sk_storage)."""
    from bcc.libbcc import lib as libbcc

    out: dict[str, Map] = {}
    try:
        for name, spec in specs.items():
            bcc_fd = libbcc.bpf_table_fd(b.module, name.encode())
            if bcc_fd < 0:
                raise LookupError(f"{SOURCE} declares no map {name}")
            fd = os.dup(bcc_fd)
            try:
                out[name] = Map(fd, spec.key, spec.value, name=name)
            except BaseException:
                os.close(fd)
                raise
    except BaseException:
        for m in out.values():
            m.close()
        raise
    return out


def load(bpffs: str | None, capacities: socket_lb.Capacities | None = None,
         tc_capacities: TcCapacities | None = None, xdp: bool = False,
         pods: bool = True) -> TcLB:
    """Compile and load the TC programs (SCHED_CLS; pods False: without
    lb_pod_ingress), with xdp also
    lb_xdp_ingress (XDP) from the same compile. With a bpffs, create
    or reuse the pinned maps, shared with the socket LB; bpffs None gives
    private maps (tests, `trace --bpf` on a scratch copy)."""
    if bpffs is not None:
        fs.ensure(bpffs)
        os.makedirs(socket_lb.maps_dir(bpffs), exist_ok=True)
        socket_lb.check_pinned_maps(bpffs, sizes=(capacities or socket_lb.Capacities()).defines())
        check_pinned_tc_maps(bpffs, (tc_capacities or TcCapacities()).defines())
    b = compiler.compile_file(SOURCE, [socket_lb.BPF_SRC_DIR],
                              defines(bpffs, capacities, tc_capacities, xdp=xdp, pods=pods),
                              debug_info=bpffs is None
                              or not socket_lb.all_pinned(bpffs, {**L.MAPS, **L.TC_MAPS}))
    try:
        prog_fds = {name: compiler.load_prog(b, name, compiler.PROG_TYPE_SCHED_CLS)
                    for name in programs(pods)}
        xdp_error = None
        if xdp:  # a refusal costs only the acceleration: TC runs on
            try:
                prog_fds[PROG_XDP] = compiler.load_prog(b, PROG_XDP, compiler.PROG_TYPE_XDP)
            except RuntimeError as e:
                xdp_error = str(e).splitlines()[0]
        tc_maps = TcMaps(**_module_maps(b, L.TC_MAPS))
        try:
            lb_maps = socket_lb.LBMaps(**_module_maps(b, L.MAPS))
        except BaseException:
            tc_maps.close()
            raise
    except BaseException:
        b.cleanup()
        raise
    lb = TcLB(b, prog_fds, tc_maps, lb_maps)
    lb.xdp_error = xdp_error
    return lb


def _sizes(capacities: socket_lb.Capacities | None,
           tc_capacities: TcCapacities | None) -> dict[str, int]:
    """The capacity -D defines of both map sets, as a loader child takes them."""
    return {**(capacities or socket_lb.Capacities()).defines(),
            **(tc_capacities or TcCapacities()).defines()}


def pins_ready(bpffs: str, capacities: socket_lb.Capacities | None = None,
               tc_capacities: TcCapacities | None = None, tc_maps: bool = True) -> bool:
    """Every map of the socket LB and (tc_maps) the TC programs is pinned
    with this layout and these sizes: their loads then create and replace
    nothing."""
    specs = map_pins.specs(tc_maps)
    return (socket_lb.all_pinned(bpffs, specs) and not socket_lb.incompatible_pins(
        bpffs, specs, _sizes(capacities, tc_capacities)))


def pin_maps(bpffs: str, capacities: socket_lb.Capacities | None = None,
             tc_capacities: TcCapacities | None = None, tc_maps: bool = True) -> None:
    """Create (or replace where incompatible) every pinned map of the socket
    LB and (tc_maps) the TC programs, here, without a compile (map_pins), so
    that the programs' loads can then run at the same time, and the maps be
    filled while they do."""
    map_pins.pin_maps(bpffs, _sizes(capacities, tc_capacities), tc_maps)


def load_out_of_process(bpffs: str, capacities: socket_lb.Capacities | None = None,
                        tc_capacities: TcCapacities | None = None,
                        xdp: bool = False, pods: bool = True) -> TcLB:
    """Compile, load and pin in a child process (`main` below), then open
    the pins here: as for the socket LB, BCC and LLVM (about 150 MB of RSS)
    never enter the agent. The child replaces incompatible TC pins. xdp:
    also lb_xdp_ingress; a verifier that refuses it fails only that
    (the TcLB's xdp_error says why; the TC programs load as ever)."""
    said = loader.run_child(__name__, bpffs, _sizes(capacities, tc_capacities), "the TC programs",
                            extra_args=[*(["--xdp"] if xdp else []),
                                        *([] if pods else ["--no-pod-ingress"])])
    xdp_error = next((line.removeprefix(XDP_REFUSED) for line in said.splitlines()
                      if line.startswith(XDP_REFUSED)), None)
    names = programs(pods) + ((PROG_XDP,) if xdp and not xdp_error else ())
    prog_fds: dict[str, int] = {}
    try:
        for name in names:
            prog_fds[name] = open_pinned_program(bpffs, name)
        tc_maps = open_pinned_tc_maps(bpffs)
        try:
            lb_maps = socket_lb.open_pinned_maps(bpffs)
        except BaseException:
            tc_maps.close()
            raise
    except BaseException:
        for fd in prog_fds.values():
            os.close(fd)
        raise
    lb = TcLB(None, prog_fds, tc_maps, lb_maps)
    lb.xdp_error = xdp_error
    return lb


def prog_pin_path(bpffs: str, name: str) -> str:
    return os.path.join(bpffs, PROGS_SUBDIR, name)


def pin_programs(lb: TcLB, bpffs: str) -> None:
    """Pin the programs (replacing older pins) so `trace --bpf` and other
    tools reach the very programs the filters run."""
    for name, fd in lb.prog_fds.items():
        path = prog_pin_path(bpffs, name)
        fs.unpin(path)
        fs.pin(fd, path)


def open_pinned_program(bpffs: str, name: str = PROG_NETDEV_INGRESS) -> int:
    """A new fd for a pinned TC program (caller closes it)."""
    return fs.open_pinned(prog_pin_path(bpffs, name))


def open_pinned_tc_maps(bpffs: str) -> TcMaps:
    """Typed handles on the pinned TC maps without compiling (control plane,
    `maps dump`). FileNotFoundError when the TC programs never ran here."""
    return TcMaps(**socket_lb.open_pinned(bpffs, L.TC_MAPS, "TC"))


# ---------------------------------------------------------------- control data


LB_MODE_FLAGS = {"snat": L.ConfigFlag(0), "hybrid": L.ConfigFlag.DSR_TCP,
                 "dsr": L.ConfigFlag.DSR_TCP | L.ConfigFlag.DSR_UDP}


def write_node_config(maps: TcMaps, snat_ip4: str | None = None,
                      snat_ip6: str | None = None, port_min: int = 0, port_max: int = 0,
                      ct_timeout_tcp: int = 0, ct_timeout_other: int = 0,
                      ct_timeout_closing: int = 0,
                      masquerade_cluster_ip: Iterable[int] = (),
                      pod_lb: bool = False, lb_mode: str = "snat") -> L.LbNodeConfig:
    """Set the node's masquerade addresses (one per family; None: that family
    cannot masquerade and such flows are dropped), the SNAT port range and
    conntrack timeouts (0: the defaults in lb_types.h), and the families (4,
    6) in which external traffic to ClusterIPs is masqueraded
    (frontends.cluster_ip_masquerade_families); pod_lb: lb_pod_ingress
    balances pods' new flows (the socket LB skips some pods, sock_scope.py);
    lb_mode: "snat", "dsr" (TCP and UDP by Direct Server Return) or
    "hybrid" (DSR for TCP, SNAT for UDP), Cilium's bpf-lb-mode.
    Takes effect for the next new flow; a single array write, so readers
    never see half of it."""
    cfg = L.LbNodeConfig(snat_port_min=port_min, snat_port_max=port_max,
                         ct_timeout_tcp=ct_timeout_tcp, ct_timeout_other=ct_timeout_other,
                         ct_timeout_closing=ct_timeout_closing)
    if pod_lb:
        cfg.flags |= L.ConfigFlag.POD_LB
    cfg.flags |= LB_MODE_FLAGS[lb_mode]
    for family in masquerade_cluster_ip:
        cfg.flags |= L.ConfigFlag.MASQ_CLUSTER_IP6 if family == 6 else L.ConfigFlag.MASQ_CLUSTER_IP4
    if snat_ip4:
        cfg.snat_ip4 = L.ip4(snat_ip4)
        cfg.flags |= L.ConfigFlag.SNAT4
    if snat_ip6:
        cfg.snat_ip6 = L.ip6(snat_ip6)
        cfg.flags |= L.ConfigFlag.SNAT6
    maps.lb_node_config.set(ctypes.c_uint32(L.CONFIG_KEY), cfg)
    return cfg


def set_pod_lb(maps: TcMaps, on: bool) -> None:
    """Turn lb_pod_ingress's balancing on or off, the rest of the node
    config as it is (`pyagent socket-lb exclude` while the agent runs)."""
    key = ctypes.c_uint32(L.CONFIG_KEY)
    cfg = maps.lb_node_config.get(key)
    assert isinstance(cfg, L.LbNodeConfig)
    if on:
        cfg.flags |= L.ConfigFlag.POD_LB
    else:
        cfg.flags &= ~L.ConfigFlag.POD_LB
    maps.lb_node_config.set(key, cfg)


def src_range_key(rev_nat_id: int, cidr: str) -> L.Lb4SrcRangeKey | L.Lb6SrcRangeKey:
    """The LPM key of one loadBalancerSourceRanges entry of a frontend.
    Surrounding whitespace is ignored (kube-proxy trims it too)."""
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    plen = L.SRC_RANGE_PREFIX_BITS + net.prefixlen
    if net.version == 4:
        return L.Lb4SrcRangeKey(plen, rev_nat_id, L.ip4(str(net.network_address)))
    return L.Lb6SrcRangeKey(plen, rev_nat_id, L.ip6(str(net.network_address)))


def sync_source_ranges(maps: TcMaps, desired: Mapping[int, Iterable[str]],
                       prune: bool = False) -> tuple[int, int]:
    """Make the allowed source ranges of every service id in desired exactly
    its CIDRs (both families; CIDRs of a family the frontend lacks are
    harmless); with prune, ids not in desired lose theirs too (full sync).
    Reads each trie once. New entries go in before stale ones go out, so a
    changing list never blocks a client both versions allow. The frontend's
    master entry must carry LB_F_SOURCE_RANGE for the ranges to count.
    Returns (written, deleted)."""
    want: dict[bytes, L.Lb4SrcRangeKey | L.Lb6SrcRangeKey] = {}
    for rev_nat_id, cidrs in desired.items():
        for c in cidrs:
            k = src_range_key(rev_nat_id, c)
            want[bytes(k)] = k
    written = deleted = 0
    for m, kind in ((maps.lb4_srcrange, L.Lb4SrcRangeKey),
                    (maps.lb6_srcrange, L.Lb6SrcRangeKey)):
        have = {bytes(k): k for k in list(m.keys())}
        new = [k for b, k in want.items() if isinstance(k, kind) and b not in have]
        if new:
            written += m.update_many((k, ctypes.c_uint8(1)) for k in new)
        for b, k in have.items():
            if b not in want and (prune or k.rev_nat_id in desired):
                deleted += m.delete(k)
    return written, deleted


def set_source_ranges(maps: TcMaps, rev_nat_id: int, cidrs: Iterable[str]) -> None:
    """sync_source_ranges for one service id."""
    sync_source_ranges(maps, {rev_nat_id: list(cidrs)})






def delete_flows_to(maps: TcMaps, backend_ip: str, port: int, proto: int | str) -> int:
    """Forget the tracked flows of one backend (all four entries of each),
    as kube-proxy clears UDP conntrack of an endpoint that went away: the
    next datagram is balanced afresh instead of following a backend that
    another service still keeps alive. Returns how many entries went."""
    return delete_flows_of(maps, [(backend_ip, port, proto)])


def delete_flows_of(maps: TcMaps, backends: Iterable[tuple[str, int, int | str]]) -> int:
    """delete_flows_to for several (ip, port, proto) backends: one walk of
    each family's map for all of them (a rolling update removes hundreds)."""
    gone: dict[int, set[tuple[bytes, int, int]]] = {4: set(), 6: set()}
    for ip, port, proto in backends:
        v6 = ":" in ip
        gone[6 if v6 else 4].add((bytes(L.ip6(ip)) if v6 else L.ip4(ip), L.be16(port),
                                  L.proto_number(proto)))
    n = 0
    for fam, ct, enc in ((4, maps.lb4_ct, lambda a: a), (6, maps.lb6_ct, bytes)):
        if not gone[fam]:
            continue
        doomed = [k for k, v in ct.items()
                  if (enc(k.saddr), k.sport, k.proto) in gone[fam]
                  or (enc(k.daddr), k.dport, k.proto) in gone[fam]
                  or (v.flags & L.CtFlag.SERVICE
                      and (enc(v.daddr), v.dport, k.proto) in gone[fam])]
        n += ct.delete_many(doomed)
    return n


# ---------------------------------------------------------------- agent entry


def setup(bpffs: str, netdevs: Iterable[str], pods: Iterable[str] = (),
          netns: str | None = None, snat_ip4: str | None = None, snat_ip6: str | None = None,
          capacities: socket_lb.Capacities | None = None,
          tc_capacities: TcCapacities | None = None,
          masquerade_cluster_ip: Iterable[int] = (), pod_lb: bool = False,
          lb_mode: str = "snat", xdp: bool = False) -> TcLB:
    """Everything an agent start needs, in a hitless order: load (reusing
    the pinned maps and conntrack), write the node config, pin the programs,
    then swap the filters in place. The caller keeps the TcLB open while it
    runs and close()s it on exit (filters and pins stay). xdp: load
    lb_xdp_ingress too (accel.apply attaches it)."""
    lb = load_out_of_process(bpffs, capacities, tc_capacities, xdp=xdp)  # pins them
    configure(lb, netdevs, pods, netns, snat_ip4, snat_ip6, masquerade_cluster_ip,
              pod_lb, lb_mode)
    return lb


def configure(lb: TcLB, netdevs: Iterable[str], pods: Iterable[str] = (),
              netns: str | None = None, snat_ip4: str | None = None,
              snat_ip6: str | None = None, masquerade_cluster_ip: Iterable[int] = (),
              pod_lb: bool = False, lb_mode: str = "snat") -> None:
    """setup() after the load (load_out_of_process): the node config, then
    the filters; closes `lb` if either fails."""
    try:
        write_node_config(lb.maps, snat_ip4=snat_ip4, snat_ip6=snat_ip6,
                          masquerade_cluster_ip=masquerade_cluster_ip, pod_lb=pod_lb,
                          lb_mode=lb_mode)
        attach(lb, netdevs=netdevs, pods=pods, netns=netns)
    except BaseException:
        lb.close()
        raise


# ---------------------------------------------------------------- attach


@contextlib.contextmanager
def _iproute(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def interfaces(netns: str | None = None, prefixes: Iterable[str] = ()) -> list[str]:
    """Names of the links in netns starting with one of prefixes (all when
    none given): how an agent finds pod veths of a routed CNI ("veth",
    "cali", "lxc") to pass to attach() again when pods come and go. Bridge
    CNIs need only their bridge (cni0, cbr0) hooked."""
    want = tuple(prefixes)
    with _iproute(netns) as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(n for n in names if n and (not want or n.startswith(want)))


def _ifindex(ipr: Any, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise LookupError(f"no interface {ifname}")
    return idx[0]


def _ensure_clsact(ipr: Any, index: int) -> bool:
    """Add a clsact qdisc unless there is one; True if this call added it."""
    try:
        ipr.tc("add", "clsact", index)
    except Exception as e:  # pyroute2 raises NetlinkError (an OSError subclass)
        if getattr(e, "code", None) == errno.EEXIST:
            return False
        raise
    return True


def _filter_name(prog: str) -> str:
    return FILTER_NAME_PREFIX + prog


def attach(lb: TcLB, netdevs: Iterable[str] = (), pods: Iterable[str] = (),
           netns: str | None = None) -> list[tuple[str, str, str]]:
    """Attach the programs to node interfaces (netdevs) and to the host side
    of pod links (pods), in network namespace netns (a name under
    /run/netns; None: where this process runs). Idempotent: an existing
    filter of ours is replaced in place. Returns (ifname, direction, program)."""
    done = []
    with _iproute(netns) as ipr:
        for role, names in ((ROLE_NETDEV, netdevs), (ROLE_POD, pods)):
            for ifname in names:
                index = _ifindex(ipr, ifname)
                _ensure_clsact(ipr, index)
                for parent, prog in zip((PARENT_INGRESS, PARENT_EGRESS),
                                        ROLE_PROGRAMS[role], strict=True):
                    ipr.tc("replace-filter", "bpf", index, FILTER_HANDLE,
                           fd=lb.prog_fds[prog], name=_filter_name(prog), parent=parent,
                           prio=FILTER_PRIO, classid=1, direct_action=True)
                    done.append((ifname, "ingress" if parent == PARENT_INGRESS else "egress",
                                 prog))
    return done


def _our_filters(ipr: Any, index: int, parent: int) -> list[Any]:
    out = []
    for msg in ipr.get_filters(index=index, parent=parent):
        opts = msg.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        if msg.get_attr("TCA_KIND") == "bpf" and name and name.startswith(FILTER_NAME_PREFIX):
            out.append(msg)
    return out


def attached(interfaces: Iterable[str], netns: str | None = None) -> dict[str, dict[str, str]]:
    """{ifname: {"ingress"|"egress": program name}} for our filters."""
    out: dict[str, dict[str, str]] = {}
    with _iproute(netns) as ipr:
        for ifname in interfaces:
            index = _ifindex(ipr, ifname)
            found = {}
            for parent, direction in ((PARENT_INGRESS, "ingress"), (PARENT_EGRESS, "egress")):
                for msg in _our_filters(ipr, index, parent):
                    name = msg.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME")
                    found[direction] = name.removeprefix(FILTER_NAME_PREFIX)
            out[ifname] = found
    return out


def detach(interfaces: Iterable[str], netns: str | None = None) -> int:
    """Remove our filters from interfaces, and the clsact qdisc when no
    filter (of anyone) is left on it. Missing interfaces are skipped; a
    second call returns 0."""
    n = 0
    with _iproute(netns) as ipr:
        for ifname in interfaces:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                continue
            index = idx[0]
            for parent in (PARENT_INGRESS, PARENT_EGRESS):
                if not _our_filters(ipr, index, parent):
                    continue
                with contextlib.suppress(Exception):  # gone meanwhile
                    ipr.tc("del-filter", "bpf", index, FILTER_HANDLE, parent=parent,
                           prio=FILTER_PRIO)
                    n += 1
            if _has_clsact(ipr, index) and not any(
                    ipr.get_filters(index=index, parent=p)
                    for p in (PARENT_INGRESS, PARENT_EGRESS)):
                with contextlib.suppress(Exception):
                    ipr.tc("del", "clsact", index)
    return n


def _has_clsact(ipr: Any, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def cleanup(bpffs: str, interfaces: Iterable[str] = (), netns: str | None = None) -> int:
    """Detach from interfaces, unpin the TC maps and programs (the shared LB
    maps are socket_lb.cleanup's). Returns filters + pins removed; a second
    call returns 0."""
    n = detach(interfaces, netns)
    for spec in L.TC_MAPS.values():
        n += fs.unpin(spec.pin_path(bpffs))
    for name in (*PROGRAMS, PROG_XDP):
        n += fs.unpin(prog_pin_path(bpffs, name))
    fs.remove_empty_dirs(os.path.join(bpffs, PROGS_SUBDIR))
    return n


# ---------------------------------------------------------------- test runs


def test_packet(prog_fd: int, packet: bytes, repeat: int = 1) -> tuple[int, bytes]:
    """Run one frame through a loaded TC program (BPF_PROG_TEST_RUN):
    (TC verdict, the frame as the program left it). The run sees the maps
    as they are and updates them (conntrack) like real traffic."""
    res = libbpf.prog_test_run(prog_fd, packet, repeat=repeat,
                               data_out_size=max(len(packet) + 256, 1514))
    return res.retval, res.data_out


test_packet.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


XDP_DROP, XDP_PASS = 1, 2
XDP_MARK_BYTES = 4  # metadata lb_xdp_ingress leaves on a packet it finished


def test_xdp_packet(prog_fd: int, packet: bytes, repeat: int = 1) -> tuple[int, bytes]:
    """test_packet for lb_xdp_ingress: (XDP verdict, the frame as it left
    it). Kernels that return the metadata in front of the frame (5.14 on)
    have it cut off; whether XDP finished a packet shows in the XDP_DONE
    counter."""
    res = libbpf.prog_test_run(prog_fd, packet, repeat=repeat,
                               data_out_size=max(len(packet) + 256, 1514))
    out = res.data_out
    if len(out) == len(packet) + XDP_MARK_BYTES:
        out = out[XDP_MARK_BYTES:]
    return res.retval, out


test_xdp_packet.__test__ = False  # type: ignore[attr-defined]


def verdict_name(retval: int) -> str:
    return VERDICTS.get(retval, f"TC_ACT({retval})")


def main() -> int:
    """The child of load_out_of_process: compile, load, pin, exit."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bpffs", required=True)
    ap.add_argument("--size", action="append", default=[], metavar="DEFINE=N",
                    help="a capacity -D define of the socket LB or the TC maps")
    ap.add_argument("--xdp", action="store_true", help="also load and pin lb_xdp_ingress")
    ap.add_argument("--no-pod-ingress", action="store_true",
                    help="leave lb_pod_ingress out (no pod interfaces)")
    args = ap.parse_args()
    loader.child_started(loader.NICE_TC)
    sizes = {d: int(v) for d, v in (item.split("=", 1) for item in args.size)}
    tc_fields = {"LB_CT_MAP_MAX": "ct", "LB_SRC_RANGE_MAP_MAX": "src_range",
                 "LB_MAGLEV_MAP_MAX": "maglev"}
    tc_caps = TcCapacities(**{tc_fields[d]: v for d, v in sizes.items() if d in tc_fields})
    caps = socket_lb.Capacities.from_defines(
        {d: v for d, v in sizes.items() if d not in tc_fields})
    # As for the socket LB's maps: a TC map of another layout or size is
    # replaced loudly (conntrack starts empty), never reused.
    if os.path.isdir(socket_lb.maps_dir(args.bpffs)):
        for path, why in socket_lb.incompatible_pins(args.bpffs, L.TC_MAPS, tc_caps.defines()):
            print(f"replacing incompatible pinned map {path}: {why}", file=sys.stderr)
            fs.unpin(path)
    for name in (PROG_XDP, PROG_POD_INGRESS):  # never a stale one
        fs.unpin(prog_pin_path(args.bpffs, name))
    lb = load(args.bpffs, caps, tc_caps, xdp=args.xdp, pods=not args.no_pod_ingress)
    try:
        pin_programs(lb, args.bpffs)
        if lb.xdp_error:
            print(f"{XDP_REFUSED}{lb.xdp_error}", file=sys.stderr)
    finally:
        lb.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
