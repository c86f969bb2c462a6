"""The eBPF dataplane: socket hooks on a cgroup, state in pinned maps.

Start-up is hitless: the pinned maps are reused (BCC's pinned tables), the
pinned links are updated in place with the new programs, and the service and
backend ids are rebuilt from the maps, so the first sync writes only what
changed while the agent was away.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ebpf import cgroup as cg
from pyagent.core.config import NodeConfig
from pyagent.core.gc_pause import gc_paused
from pyagent.core.model import PROTOCOL_NAMES, ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, FrontendInfo, Mode, SyncStatus
from pyagent.dataplanes.ebpf import (
    accel,
    events,
    parallel_load,
    pod_links,
    removal,
    sock_scope,
    socket_lb,
    tc,
)
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf.frontends import (
    Frontend,
    cluster_ip_masquerade_families,
    frontends_for,
)
from pyagent.dataplanes.ebpf.kernel import KernelWriter, decode, read_entries, with_tc_state
from pyagent.dataplanes.ebpf.reconciler import Reconciler
from pyagent.dataplanes.ebpf.sockets import BackendJanitor
from pyagent.dataplanes.ebpf.stats import Stats

log = logging.getLogger(__name__)


def age_order(states: Mapping[ServiceKey, tuple[ServicePortState, ...]]):
    """Sort key of Services for the reconciler: oldest creationTimestamp first
    (unknown ones after every known one), then namespace/name. When capacity
    runs out, Services earlier in this order are programmed first."""
    created: dict[ServiceKey, float] = {}
    for svc, ports in states.items():
        stamp = ports[0].service.created if ports else None
        created[svc] = float("inf") if stamp is None else stamp

    def key(svc: ServiceKey) -> tuple[float, ServiceKey]:
        return (created.get(svc, float("-inf")), svc)  # deletions first: nothing to check
    return key


class EbpfDataplane:
    name = "ebpf"

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.bpffs = config.bpffs
        self.cgroup = config.cgroup or cg.cgroup2_mount()
        self.loads: parallel_load.Loads | None = None  # the programs' loads of this start
        self.maps: socket_lb.LBMaps | None = None  # the pinned maps, opened before the loads end
        self.tc_maps: tc.TcMaps | None = None
        self.lb: socket_lb.SockLB | None = None  # the socket LB, once loaded
        self.reconciler: Reconciler | None = None
        self.stats: Stats | None = None
        self._attached = False
        self.tc: tc.TcLB | None = None  # the TC programs, once loaded and configured
        self.pod_links: pod_links.PodLinkWatcher | None = None  # pod interface patterns
        self.xdp: list[accel.Outcome] = []  # per node interface: XDP mode or why not
        self.janitor: BackendJanitor | None = None
        self._skipped_before = self._skips = False  # socket LB scope: see setup

    def setup(self) -> None:
        """Open (make, if needed) the pinned maps and adopt what they hold; the
        programs compile meanwhile (parallel_load). They are attached at the
        first full sync, once the maps hold the desired state and the loads
        are done: after a layout upgrade (new, empty maps) no connection
        ever sees them empty, and the first sync's work overlaps the
        compiles. wait_loaded() raises if a load failed."""
        caps = socket_lb.Capacities.for_lb_map_max(self.config.bpf_lb_map_max,
                                                   self.config.bpf_lb_rev_nat_map_max)
        with_tc = bool(self.config.interfaces or self.config.pod_interfaces)
        self.loads = parallel_load.start(
            self.bpffs, caps,
            tc.TcCapacities.for_lb_map_max(self.config.bpf_lb_map_max) if with_tc else None,
            xdp=self.config.bpf_lb_acceleration != accel.DISABLED,
            pods=bool(self.config.pod_interfaces))
        try:
            if not self.loads.pinned:
                self.loads.socket_lb()  # it makes the maps
            self.maps = socket_lb.open_pinned_maps(self.bpffs)
            if with_tc:
                if not self.loads.pinned:
                    self.loads.tc()
                self.tc_maps = tc.open_pinned_tc_maps(self.bpffs)
            # Make-before-break across a scope change: the TC programs balance
            # pods (POD_LB) before the socket LB starts skipping them, and stop
            # only once it no longer does (_activate).
            self._skipped_before = sock_scope.skips_pods(self.maps)
            self._skips = self._check_scope()
            if not self._tc_first():
                self._scope()
            self._adopt()
        except BaseException:
            self.close()
            raise
        self.stats = Stats(self.maps, lambda: self.reconciler,
                           self.tc_maps.lb_tc_stats if self.tc_maps else None)
        self._attached = False
        self.janitor = BackendJanitor(self.maps, self.tc_maps, cgroup=self.cgroup)

    def wait_loaded(self) -> None:
        """Block until the programs' loads are done; raise if one failed."""
        assert self.loads is not None, "setup() first"
        self.loads.wait()

    def _tc_first(self) -> bool:
        """The TC programs go live before the socket LB's scope changes."""
        assert self.loads is not None
        return self.loads.has_tc and (self._skips or self._skipped_before)

    def _activate(self) -> None:
        """After the first full sync: the programs, as their loads finish. The
        socket LB first (Services answer from the node and its pods), the
        TC programs next, unless a scope change needs them first."""
        assert self.loads is not None
        if self._tc_first() and self.tc is None:
            self._setup_tc(pod_lb=True)
            self._scope()
            if self._skipped_before and not self._skips:
                assert self.tc_maps is not None
                tc.set_pod_lb(self.tc_maps, False)
        if not self._attached:
            self.lb = self.loads.socket_lb()
            self._attach()
        if self.loads.has_tc and self.tc is None:
            self._setup_tc(pod_lb=False)

    def _live(self) -> bool:
        """Every program of this start is in place."""
        return self._attached and (self.loads is None or not self.loads.has_tc
                                   or self.tc is not None)

    def _setup_tc(self, pod_lb: bool) -> None:
        """The TC programs (once their load is done) on the node and pod
        interfaces; pod interface patterns (`veth+`) are followed as links
        come and go."""
        assert self.loads is not None
        ips = self.config.node_ips
        watcher = None
        if pod_links.prefixes(self.config.pod_interfaces):
            # subscribed before the links are listed: none slips between
            watcher = pod_links.PodLinkWatcher(
                self.config.pod_interfaces, lambda name: tc.attach(self.tc, pods=[name]))
        try:
            lb = self.loads.tc()
            pods = pod_links.expand(self.config.pod_interfaces)
            tc.configure(lb, self.config.interfaces, pods,
                         snat_ip4=next((ip for ip in ips if ":" not in ip), None),
                         snat_ip6=next((ip for ip in ips if ":" in ip), None),
                         masquerade_cluster_ip=cluster_ip_masquerade_families(self.config),
                         pod_lb=pod_lb, lb_mode=self.config.bpf_lb_mode)
            self.tc = lb
            # after TC is in place: XDP only ever takes over from it
            self.xdp = accel.apply(self.config.bpf_lb_acceleration, self.config.interfaces,
                                   self.tc.prog_fds.get(tc.PROG_XDP), self.tc.xdp_error)
        except BaseException:
            if watcher is not None:
                watcher.stop()
            raise
        log.info("TC programs on %s (pod side: %s)", ",".join(self.config.interfaces) or "-",
                 ",".join(pods) or "-")
        if watcher is not None:
            watcher.start(pods)
            self.pod_links = watcher

    def _check_scope(self) -> bool:
        """Refuse a scope this node cannot serve; True if the socket LB will
        leave some pods to TC (host-namespace-only, or opted-out pods)."""
        assert self.maps is not None
        only = self.config.socket_lb_host_ns_only
        if only and not self.config.pod_interfaces:
            raise ValueError("socketLBHostNamespaceOnly needs pod interfaces "
                             "(pyagent.podInterfaces / --pod-interface): pods' connections "
                             "are balanced there")
        if only and not socket_lb.kernel_variant().features.netns_cookie:
            raise ValueError("socketLBHostNamespaceOnly: this kernel has no "
                             "bpf_get_netns_cookie at the socket hooks (Linux 5.7)")
        excluded = sock_scope.excluded(self.maps)
        if excluded and not self.config.pod_interfaces:
            log.warning("%d network namespaces opted out of the socket LB, but no pod "
                        "interfaces carry the TC programs: their Service connections are "
                        "not balanced", len(excluded))
        return only or bool(excluded)

    def _scope(self) -> None:
        """The socket LB's scope: host-namespace-only as configured; opted-out
        pods (lb_sock_skip, pinned) stay out across restarts."""
        assert self.maps is not None
        only = self.config.socket_lb_host_ns_only
        cfg = sock_scope.configure(self.maps, only,
                                   sock_scope.host_netns_cookie() if only else 0)
        if cfg.flags:
            log.info("socket LB scope: %s%s", "host namespace only" if only else "all",
                     f", {len(sock_scope.excluded(self.maps))} namespaces opted out"
                     if cfg.flags & L.SockFlag.SKIP_LIST else "")

    def _attach(self) -> None:
        assert self.lb is not None
        adopted = socket_lb.attach(self.lb, self.bpffs, self.cgroup)
        if any(adopted.values()):
            log.info("adopted existing links on %s (hitless restart)", self.cgroup)
        self._attached = True
        for path in socket_lb.stale_version_pins(self.bpffs):
            log.info("removing %s: maps of another layout version, now unused", path)
            os.unlink(path)

    def _adopt(self) -> None:
        assert self.maps is not None
        tc_maps = self.tc_maps
        state = decode(read_entries(self.maps))
        if tc_maps is not None:
            state = with_tc_state(state, tc_maps)
        if state.frontends:
            log.info("adopted %d frontends and %d backends from pinned maps",
                     len(state.frontends), len(state.backend_ids))
        self.reconciler = Reconciler(KernelWriter(self.maps, tc_maps), state)

    def sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
             full: bool) -> SyncStatus:
        assert self.reconciler is not None, "setup() first"
        with gc_paused():  # a full sync makes ~10 objects per endpoint: no GC rescans
            return self._sync(states, full)

    def _sync(self, states: Mapping[ServiceKey, tuple[ServicePortState, ...]],
              full: bool) -> SyncStatus:
        assert self.reconciler is not None
        changes: dict[ServiceKey, list[Frontend]] = {}
        for svc, ports in states.items():
            changes[svc] = [fe for sps in ports for fe in frontends_for(sps, self.config)]
        if full:
            # Services the reconciler holds that no longer exist.
            for svc in self.reconciler.services() - set(changes):
                changes[svc] = []
        try:
            status = self.reconciler.apply(changes, prune_unowned=full,
                                           order=age_order(states))
        except Exception:
            # The maps are consistent (make-before-break) but our bookkeeping
            # may not match them: rebuild it from the kernel before retrying.
            self._adopt()
            raise
        if self.janitor is not None:
            self.janitor.removed(self.reconciler.last_released)
        if full and not self._live():
            self._activate()
        if full:  # a killed `pyagent monitor` must not keep events on for long
            events.prune(self.bpffs)
        log.log(logging.INFO if full or self.reconciler.last_ops > 100 else logging.DEBUG,
                "%s sync of %d services: %d map operations", "full" if full else "partial",
                len(changes), self.reconciler.last_ops)
        return status

    def close(self) -> None:
        if self.janitor is not None:
            self.janitor.wait()
        if self.loads is not None:  # waits for loads still running
            self.loads.discard(live=(self.lb, self.tc))
            self.loads = None
        if self.pod_links is not None:
            self.pod_links.stop()
            self.pod_links = None
        if self.tc is not None:
            self.tc.close()
            self.tc = None
        if self.lb:
            self.lb.close()
            self.lb = None
        for maps in (self.maps, self.tc_maps):
            if maps is not None:
                maps.close()
        self.maps = self.tc_maps = None

    def describe(self) -> Description:
        r = self.reconciler
        fes = () if r is None else tuple(
            FrontendInfo(fe.ip, fe.port, PROTOCOL_NAMES.get(fe.proto, str(fe.proto)),
                         L.SCOPE_NAMES.get(fe.scope, str(fe.scope)), fe.service)
            for fe in r.frontends())
        xdp = tuple((o.ifname, o.mode or f"tc: {o.reason}") for o in self.xdp)
        return Description(self.name, str(self.cgroup or ""), fes, xdp)

    def counters(self) -> Stats | None:
        return self.stats

    def cleanup(self) -> None:
        """`pyagent cleanup`'s removal (pyagent.dataplanes.registry)."""
        self.close()
        removal.remove(self.config)


MODE = Mode("ebpf", EbpfDataplane, removal.present, removal.remove, clean=removal.remove)
