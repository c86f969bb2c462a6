"""The eBPF dataplane: socket hooks on a cgroup, state in pinned maps.

Start-up is hitless: the pinned maps are reused (BCC's pinned tables), the
pinned links are updated in place with the new programs, and the service and
backend ids are rebuilt from the maps, so the first sync writes only what
changed while the agent was away.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ebpf import cgroup as cg
from pyagent.core.config import NodeConfig
from pyagent.core.manifest_dir import gc_paused
from pyagent.core.model import PROTOCOL_NAMES, ServiceKey
from pyagent.core.state import ServicePortState
from pyagent.dataplanes.base import Description, FrontendInfo, Mode, SyncStatus
from pyagent.dataplanes.ebpf import accel, events, pod_links, removal, sock_scope, socket_lb
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
        self.lb: socket_lb.SockLB | None = None
        self.reconciler: Reconciler | None = None
        self.stats: Stats | None = None
        self._attached = False
        self.tc = None  # tc.TcLB when the node has TC interfaces
        self.pod_links: pod_links.PodLinkWatcher | None = None  # pod interface patterns
        self.xdp: list[accel.Outcome] = []  # per node interface: XDP mode or why not
        self.janitor: BackendJanitor | None = None

    def setup(self) -> None:
        """Load (reusing pinned maps) and adopt. The programs are attached at
        the first full sync, once the maps hold the desired state: after a
        layout upgrade (new, empty maps) no connection ever sees them empty."""
        caps = socket_lb.Capacities.for_lb_map_max(self.config.bpf_lb_map_max,
                                                   self.config.bpf_lb_rev_nat_map_max)
        tc_loaded = None
        if self.config.interfaces or self.config.pod_interfaces:
            from pyagent.dataplanes.ebpf import parallel_load, tc

            tc_loaded = parallel_load.start_tc_load(
                self.bpffs, caps, tc.TcCapacities.for_lb_map_max(self.config.bpf_lb_map_max),
                xdp=self.config.bpf_lb_acceleration != accel.DISABLED)
        try:
            self.lb = socket_lb.load_out_of_process(self.bpffs, caps)
            # Make-before-break across a scope change: the TC programs balance
            # pods (POD_LB) before the socket LB starts skipping them, and stop
            # only once it no longer does.
            skipped_before = sock_scope.skips_pods(self.lb.maps)
            skips = self._check_scope()
        except BaseException:
            if tc_loaded is not None:
                parallel_load.discard(tc_loaded)
            raise
        if tc_loaded is not None:
            self._setup_tc(tc_loaded, pod_lb=skips or skipped_before)
        self._scope()
        if self.tc is not None and skipped_before and not skips:
            from pyagent.dataplanes.ebpf import tc

            tc.set_pod_lb(self.tc.maps, False)
        self._adopt()
        self.stats = Stats(self.lb.maps, lambda: self.reconciler,
                           self.tc.maps.lb_tc_stats if self.tc else None)
        self._attached = False
        self.janitor = BackendJanitor(self.lb.maps, self.tc.maps if self.tc else None,
                                      cgroup=self.cgroup)

    def _setup_tc(self, loaded: Callable[[], Any], pod_lb: bool) -> None:
        """The TC programs (`loaded` waits for their load: parallel_load) on
        the node and pod interfaces; pod interface patterns (`veth+`) are
        followed as links come and go."""
        assert self.lb is not None
        from pyagent.dataplanes.ebpf import parallel_load, tc

        ips = self.config.node_ips
        watcher = None
        try:
            if pod_links.prefixes(self.config.pod_interfaces):
                # subscribed before the links are listed: none slips between
                watcher = pod_links.PodLinkWatcher(
                    self.config.pod_interfaces, lambda name: tc.attach(self.tc, pods=[name]))
        except BaseException:
            parallel_load.discard(loaded)
            raise
        try:
            lb = loaded()
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
        assert self.lb is not None
        only = self.config.socket_lb_host_ns_only
        if only and not self.config.pod_interfaces:
            raise ValueError("socketLBHostNamespaceOnly needs pod interfaces "
                             "(pyagent.podInterfaces / --pod-interface): pods' connections "
                             "are balanced there")
        if only and not self.lb.variant.features.netns_cookie:
            raise ValueError("socketLBHostNamespaceOnly: this kernel has no "
                             "bpf_get_netns_cookie at the socket hooks (Linux 5.7)")
        excluded = sock_scope.excluded(self.lb.maps)
        if excluded and not self.config.pod_interfaces:
            log.warning("%d network namespaces opted out of the socket LB, but no pod "
                        "interfaces carry the TC programs: their Service connections are "
                        "not balanced", len(excluded))
        return only or bool(excluded)

    def _scope(self) -> None:
        """The socket LB's scope: host-namespace-only as configured; opted-out
        pods (lb_sock_skip, pinned) stay out across restarts."""
        assert self.lb is not None
        only = self.config.socket_lb_host_ns_only
        cfg = sock_scope.configure(self.lb.maps, only,
                                   sock_scope.host_netns_cookie() if only else 0)
        if cfg.flags:
            log.info("socket LB scope: %s%s", "host namespace only" if only else "all",
                     f", {len(sock_scope.excluded(self.lb.maps))} namespaces opted out"
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
        assert self.lb is not None
        tc_maps = self.tc.maps if self.tc is not None else None
        state = decode(read_entries(self.lb.maps))
        if tc_maps is not None:
            state = with_tc_state(state, tc_maps)
        if state.frontends:
            log.info("adopted %d frontends and %d backends from pinned maps",
                     len(state.frontends), len(state.backend_ids))
        self.reconciler = Reconciler(KernelWriter(self.lb.maps, tc_maps), state)

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
        if full and not self._attached:
            self._attach()
        if full:  # a killed `pyagent monitor` must not keep events on for long
            events.prune(self.bpffs)
        log.log(logging.INFO if full or self.reconciler.last_ops > 100 else logging.DEBUG,
                "%s sync of %d services: %d map operations", "full" if full else "partial",
                len(changes), self.reconciler.last_ops)
        return status

    def close(self) -> None:
        if self.janitor is not None:
            self.janitor.wait()
        if self.pod_links is not None:
            self.pod_links.stop()
            self.pod_links = None
        if self.tc is not None:
            self.tc.close()
            self.tc = None
        if self.lb:
            self.lb.close()
            self.lb = None

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
