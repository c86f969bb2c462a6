"""The node runtime, composed: what `pyagent run` starts once its flags are
read. One place knows how the pieces fit (source -> store -> agent ->
dataplane, observers fed by the agent's reports); the command line only
turns flags into a NodeConfig and a stop signal.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pyagent.core import node_object
from pyagent.core.config import NodeConfig
from pyagent.core.model import ServiceKey
from pyagent.core.sink import ObjectSink
from pyagent.dataplanes.base import Dataplane
from pyagent.node import nodeinfo
from pyagent.observe.report import SyncObserver, SyncReport

log = logging.getLogger(__name__)

NODE_WAIT = 30.0  # kube-proxy polls the Node object for its addresses this long
POD_CIDR_WAIT = 300.0  # ... and for its podCIDRs (NodeCIDR detection) this long


def api_client(config: NodeConfig) -> Any:
    """The Kubernetes API client of `config` (kubeconfig, --master or in-cluster)."""
    from pyagent.sources.kube import make_api_client

    client = make_api_client(config.kubeconfig, config.api_server)
    log.info("API server %s (%s)", client.configuration.host,
             f"kubeconfig {config.kubeconfig}" if config.kubeconfig else "in-cluster "
             "service account" if not config.api_server else "--master")
    return client


def resolve_node(config: NodeConfig, manifests: Path | None, api_client: Any,
                 interfaces_chosen: bool) -> NodeConfig:
    """Node IPs, NodeCIDR pod CIDRs and TC interfaces as kube-proxy (and, for
    the interfaces, Cilium) derive them, when they are not configured."""
    want_ips = not config.node_ips
    want_cidrs = config.local_detect_mode == "NodeCIDR"
    node = None
    if want_ips or want_cidrs:
        node = _node_object(config, manifests, api_client, need_cidrs=want_cidrs)
    changes: dict[str, Any] = {}
    links = nodeinfo.links()
    if want_ips:
        primary = node_object.primary_ips(node_object.node_ips(node), config.bind_address)
        local = nodeinfo.local_addresses(links)
        if not primary:
            log.warning("cannot determine this node's IP from its Node object (%s); using "
                        "its local addresses%s; set --node-ip or bindAddress if that is wrong",
                        config.node_name, f", {local[0]} first" if local else "")
        ips = tuple(dict.fromkeys(primary + local))
        changes["node_ips"] = ips
        log.info("node IPs: %s (%s)", ", ".join(ips) or "none",
                 f"primary {', '.join(primary)} from the Node object, then the local addresses"
                 if primary else "the local addresses; the first is the primary")
    if want_cidrs:
        cidrs = node_object.pod_cidrs(node)
        if not cidrs:
            raise SystemExit(f"pyagent: detectLocalMode NodeCIDR, but Node {config.node_name} "
                             "has no spec.podCIDRs")
        changes["cluster_cidrs"] = cidrs
        log.info("local traffic: from the Node's pod CIDRs %s (NodeCIDR)", ", ".join(cidrs))
    config = dataclasses.replace(config, **changes)
    if config.mode == "ebpf" and not (interfaces_chosen or config.interfaces):
        primaries = [str(a) for a in (config.primary_node_ip(4), config.primary_node_ip(6)) if a]
        ifaces, notes = nodeinfo.default_interfaces(primaries, links)
        for note in notes:
            log.info("%s", note)
        config = dataclasses.replace(config, interfaces=ifaces)
    return config


def _node_object(config: NodeConfig, manifests: Path | None, api_client: Any,
                 need_cidrs: bool) -> dict | None:
    if manifests:
        from pyagent.core.manifest_dir import load_manifests

        for obj in load_manifests(manifests, config.parse_limits).objects["Node"]:
            if (obj.get("metadata") or {}).get("name") == config.node_name:
                return obj
        return None
    get = nodeinfo.api_getter(api_client, config.node_name)
    if need_cidrs:
        return nodeinfo.fetch_node(get, lambda n: bool(node_object.pod_cidrs(n)), POD_CIDR_WAIT)
    return nodeinfo.fetch_node(get, lambda n: bool(node_object.node_ips(n)), NODE_WAIT)


class EventsObserver:
    """A SyncObserver handing the Services refused after each sync (by the
    dataplane, or invalid in the store) to `update`
    (sources/kube_events.RefusedServiceEvents.update)."""

    def __init__(self, update: Callable[[Mapping[ServiceKey, str]], None]) -> None:
        self._update = update

    def on_queued(self) -> None:
        pass

    def on_sync_failed(self) -> None:
        pass

    def on_synced(self, report: SyncReport) -> None:
        refused = {key: str(why) for key, why in report.errors.items()}
        for key, why in report.invalid_services.items():
            refused.setdefault(key, why)
        self._update(refused)


def make_dataplane(config: NodeConfig) -> Dataplane:
    """The dataplane of `config.mode`, after removing what other modes left in
    this node (a mode switch; pyagent.dataplanes.registry)."""
    from pyagent.dataplanes import registry

    try:
        mode = registry.get(config.mode)
    except KeyError:
        raise SystemExit(f"pyagent: unknown mode {config.mode!r}") from None
    except ImportError as exc:
        raise SystemExit(f"pyagent: mode {config.mode!r} is not available: {exc}") from exc
    for name in registry.clean_other_modes(config):
        log.info("removed the state of mode %s (mode switch)", name)
    return mode.create(config)


def serve(config: NodeConfig, manifests: Path | None, client: Any,
          stop: threading.Event) -> int:
    """Run the node until `stop` is set (or the node must restart); the exit
    code. `config` is resolved (resolve_node); `client` is the API client,
    None with `manifests`."""
    from pyagent.node.agent import Agent
    from pyagent.observe.observability import Observability

    if config.mode == "ebpf":
        from pyagent.node import kheaders

        log.info("%s", kheaders.ensure())
    dataplane = make_dataplane(config)
    obs = Observability(config)
    observers: list[SyncObserver] = [obs]
    events = None
    if client is not None:
        from pyagent.sources.kube_client import instrument
        from pyagent.sources.kube_events import RefusedServiceEvents

        instrument(client, obs.metrics.extra.request)
        events = RefusedServiceEvents(client, config.node_name)
        observers.append(EventsObserver(events.update))
    agent = Agent(config, dataplane, observers=observers)
    obs.attach(dataplane)
    exit_code = [0]
    sink: ObjectSink = agent.sink
    if config.local_detect_mode == "NodeCIDR":
        def restart(reason: str) -> None:
            log.error("%s: exiting so that the agent restarts with it (as kube-proxy does)",
                      reason)
            exit_code[0] = 1
            stop.set()
        sink = nodeinfo.PodCIDRGuard(sink, config.node_name, config.cluster_cidrs, restart)
    source: Any
    if manifests:
        from pyagent.sources.manifests import ManifestSource

        source = ManifestSource(manifests, sink, limits=config.parse_limits)
    else:
        from pyagent.sources.kube import KubeSource

        source = KubeSource(sink, node_name=config.node_name, api_client=client)
    obs.set_source(source.connectivity)
    # The HTTP servers first: the first sync can finish before the setup
    # thread is joined, and its status file must name the bound ports.
    obs.start()
    # The dataplane's setup (the BPF compiles, in child processes: seconds)
    # runs while the source lists: the first sync finds the store filled
    # (and with eBPF fills the maps while the programs still compile).
    setup_error: list[BaseException] = []

    def setup() -> None:
        try:
            agent.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in this thread
            setup_error.append(exc)
    setting_up = threading.Thread(target=setup, name="dataplane-setup")
    setting_up.start()
    try:
        source.start()
        # The Services' states are computed while the compile may still run
        # (one core for clang, one for this), not after it.
        while setting_up.is_alive() and not agent.prepare():
            setting_up.join(0.05)
    finally:
        setting_up.join()
    if setup_error:
        source.stop()
        obs.stop()
        raise setup_error[0]
    log.info("pyagent running: mode=%s node=%s node IPs=%s interfaces=%s cgroup=%s bpffs=%s",
             config.mode, config.node_name, ",".join(config.node_ips) or "-",
             ",".join(config.interfaces) or "-", config.cgroup or "(root)", config.bpffs)
    stop.wait()
    log.info("stopping; kernel state stays for the next agent (pyagent cleanup removes it)")
    source.stop()
    agent.stop()
    obs.stop()
    if events is not None:
        events.stop()
    return exit_code[0]
