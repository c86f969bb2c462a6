"""`pyagent run`: the node agent."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from pyagent.cli import kubeproxy_flags as KP
from pyagent.core.config import NodeConfig, load_config
from pyagent.node import nodeinfo

log = logging.getLogger(__name__)

EPILOG = """examples:
  # on a node, in-cluster (DaemonSet): production defaults
  pyagent run
  # a kube-proxy command line works as it is
  pyagent run --config=/var/lib/kube-proxy/config.conf --hostname-override=node-1
  # cluster-less, from manifests, into a lab cgroup and bpffs
  pyagent run --manifests examples/demo --node-name node-1 \\
      --cgroup /sys/fs/cgroup/unified/lab --bpffs /tmp/lab/bpffs
"""
NODE_WAIT = 30.0  # kube-proxy polls the Node object for its addresses this long
POD_CIDR_WAIT = 300.0  # ... and for its podCIDRs (NodeCIDR detection) this long


def add_node_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that needs a node's configuration."""
    p.add_argument("--config", type=Path, help="KubeProxyConfiguration-style YAML")
    p.add_argument("--node-name", help="this node's name (default: hostname)")
    p.add_argument("--node-ip", action="append",
                   help="an address local to the node, the first is the primary (default: "
                        "the Node object's addresses, then the node's other addresses)")
    p.add_argument("--cluster-cidr", action="append",
                   help="pod CIDR (local traffic detector); repeatable or comma-separated")
    p.add_argument("--mode", choices=KP.MODES)
    p.add_argument("--cgroup", help="cgroup v2 path for the socket hooks "
                   "(default: the root of the cgroup2 mount)")
    p.add_argument("--bpffs", help="bpffs directory for pins (default /sys/fs/bpf/pyagent)")
    p.add_argument("--interface", action="append",
                   help="node interface for NodePort/externalIP/LB traffic (TC, repeatable; "
                        "default: the ones holding the node IPs; 'none': no TC programs)")
    p.add_argument("--pod-interface", action="append",
                   help="pod-side TC hook: the pod bridge or a pod's host veth (repeatable)")
    p.add_argument("--bpf-lb-map-max", type=_map_max, metavar="N",
                   help="entries of each eBPF map holding Service state "
                   "(pyagent.bpfLbMapMax; default: the built-in sizes)")


def _map_max(text: str) -> int:
    from pyagent.core.config import lb_map_max

    try:
        return lb_map_max(int(text), "--bpf-lb-map-max")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The config file, then kube-proxy's flags, then pyagent's, on top of it.
    Raises ValueError naming the file or flag that is wrong."""
    config = load_config(getattr(args, "config", None), mode=KP.flag_mode(args))
    config = KP.apply(args, config)
    changes: dict[str, Any] = {}
    for flag, attr in (("node_name", "node_name"), ("mode", "mode"), ("cgroup", "cgroup"),
                       ("bpffs", "bpffs")):
        if getattr(args, flag, None):
            changes[attr] = getattr(args, flag)
    for flag, attr in (("node_ip", "node_ips"), ("interface", "interfaces"),
                       ("pod_interface", "pod_interfaces")):
        if getattr(args, flag, None):
            changes[attr] = tuple(getattr(args, flag))
    if changes.get("interfaces") == ("none",):
        changes["interfaces"] = ()
    notes: list[str] = []
    cidrs = KP.pyagent_cluster_cidrs(getattr(args, "cluster_cidr", None))
    if cidrs is not None:
        if config.local_detect_mode == "ClusterCIDR":
            changes["cluster_cidrs"] = cidrs
        else:
            notes.append(f"--cluster-cidr not used: detectLocalMode is {config.local_detect_mode}")
    kubeconfig = getattr(args, "kubeconfig", None)
    if kubeconfig:
        changes["kubeconfig"] = kubeconfig
    if getattr(args, "bpf_lb_map_max", None):
        changes["bpf_lb_map_max"] = args.bpf_lb_map_max
    config = dataclasses.replace(config, **changes)
    if not config.node_name:
        config = dataclasses.replace(config, node_name=socket.gethostname().lower())
    return dataclasses.replace(config, notes=config.notes + tuple(notes))


def explicit_interfaces(args: argparse.Namespace, config: NodeConfig) -> bool:
    """Whether the TC attach points were chosen (a flag, 'none', or the file)."""
    return bool(getattr(args, "interface", None)) or bool(config.interfaces)


def make_dataplane(config: NodeConfig):  # -> Dataplane
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


def setup_logging(config: NodeConfig, args: argparse.Namespace) -> None:
    """--v / logging.verbosity (4 or more: debug), --log-file."""
    root = logging.getLogger()
    if config.log_verbosity is not None and config.log_verbosity >= 4:
        root.setLevel(logging.DEBUG)
    log_file = getattr(args, KP.dest("log-file"), None)
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def set_oom_score_adj(value: int | None) -> None:
    if value is None:
        return
    try:
        Path("/proc/self/oom_score_adj").write_text(str(value))
        log.info("oom_score_adj set to %d", value)
    except OSError as exc:
        log.warning("could not set oom_score_adj to %d: %s", value, exc)


def resolve_node(config: NodeConfig, args: argparse.Namespace, api_client: Any
                 ) -> NodeConfig:
    """Node IPs, NodeCIDR pod CIDRs and TC interfaces as kube-proxy (and, for
    the interfaces, Cilium) derive them, when they are not configured."""
    want_ips = not config.node_ips
    want_cidrs = config.local_detect_mode == "NodeCIDR"
    node = None
    if want_ips or want_cidrs:
        node = _node_object(config, args, api_client, need_cidrs=want_cidrs)
    changes: dict[str, Any] = {}
    links = nodeinfo.links()
    if want_ips:
        primary = nodeinfo.primary_ips(nodeinfo.node_ips(node), config.bind_address)
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
        cidrs = nodeinfo.pod_cidrs(node)
        if not cidrs:
            raise SystemExit(f"pyagent: detectLocalMode NodeCIDR, but Node {config.node_name} "
                             "has no spec.podCIDRs")
        changes["cluster_cidrs"] = cidrs
        log.info("local traffic: from the Node's pod CIDRs %s (NodeCIDR)", ", ".join(cidrs))
    config = dataclasses.replace(config, **changes)
    if config.mode == "ebpf" and not explicit_interfaces(args, config):
        primaries = [str(a) for a in (config.primary_node_ip(4), config.primary_node_ip(6)) if a]
        ifaces, notes = nodeinfo.default_interfaces(primaries, links)
        for note in notes:
            log.info("%s", note)
        config = dataclasses.replace(config, interfaces=ifaces)
    return config


def _node_object(config: NodeConfig, args: argparse.Namespace, api_client: Any,
                 need_cidrs: bool) -> dict | None:
    if args.manifests:
        from pyagent.core.manifests import load_manifests

        for obj in load_manifests(args.manifests, config.parse_limits).objects["Node"]:
            if (obj.get("metadata") or {}).get("name") == config.node_name:
                return obj
        return None
    get = nodeinfo.api_getter(api_client, config.node_name)
    if need_cidrs:
        return nodeinfo.fetch_node(get, lambda n: bool(nodeinfo.pod_cidrs(n)), POD_CIDR_WAIT)
    return nodeinfo.fetch_node(get, lambda n: bool(nodeinfo.node_ips(n)), NODE_WAIT)


def _exit_early(config: NodeConfig, args: argparse.Namespace) -> int | None:
    """kube-proxy's flags that do one thing and exit."""
    if getattr(args, KP.dest("cleanup"), None):
        from pyagent.node import migrate

        for line in migrate.cleanup():
            print(line)
        return 0
    target = getattr(args, KP.dest("write-config-to"), None)
    if target:
        from pyagent.core import config_dump

        Path(target).write_text(config_dump.to_yaml(config))
        log.info("wrote the configuration to %s", target)
        return 0
    if getattr(args, KP.dest("init-only"), None):
        log.info("--init-only: nothing to initialise separately; exiting")
        return 0
    return None


def run(args: argparse.Namespace) -> int:
    from pyagent.node.agent import Agent
    from pyagent.observe.observability import Observability

    try:
        config = node_config(args)
    except ValueError as exc:
        print(f"pyagent run: {exc}", file=sys.stderr)
        return 2
    setup_logging(config, args)
    if (rc := _exit_early(config, args)) is not None:
        return rc
    for note in config.notes:
        log.info("config: %s", note)
    set_oom_score_adj(config.oom_score_adj)
    from pyagent.node import migrate

    if found := migrate.leftovers():
        log.warning("kube-proxy's state is still here (%s): run `pyagent cleanup "
                    "--kube-proxy` once kube-proxy is stopped (docs/migrate.md)",
                    "; ".join(found))
    api_client = None
    if not args.manifests:
        from pyagent.sources.kube import make_api_client

        api_client = make_api_client(config.kubeconfig, config.api_server)
        log.info("API server %s (%s)", api_client.configuration.host,
                 f"kubeconfig {config.kubeconfig}" if config.kubeconfig else "in-cluster "
                 "service account" if not config.api_server else "--master")
    config = resolve_node(config, args, api_client)
    if config.mode == "ebpf":
        from pyagent.node import kheaders

        log.info("%s", kheaders.ensure())
    dataplane = make_dataplane(config)
    obs = Observability(config)
    agent = Agent(config, dataplane, observers=[obs])
    obs.attach(agent)
    done = threading.Event()
    exit_code = [0]
    sink: Any = agent.sink
    if config.local_detect_mode == "NodeCIDR":
        def restart(reason: str) -> None:
            log.error("%s: exiting so that the agent restarts with it (as kube-proxy does)",
                      reason)
            exit_code[0] = 1
            done.set()
        sink = nodeinfo.PodCIDRGuard(sink, config.node_name, config.cluster_cidrs, restart)
    if args.manifests:
        from pyagent.sources.manifests import ManifestSource

        source = ManifestSource(args.manifests, sink, limits=config.parse_limits)
    else:
        from pyagent.sources.kube import KubeSource

        source = KubeSource(sink, node_name=config.node_name, api_client=api_client)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    obs.start()
    source.start()
    log.info("pyagent running: mode=%s node=%s node IPs=%s interfaces=%s cgroup=%s bpffs=%s",
             config.mode, config.node_name, ",".join(config.node_ips) or "-",
             ",".join(config.interfaces) or "-", config.cgroup or "(root)", config.bpffs)
    done.wait()
    log.info("stopping; kernel state stays for the next agent (pyagent cleanup removes it)")
    source.stop()
    agent.stop()
    obs.stop()
    if api_client is not None:
        api_client.close()
    return exit_code[0]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the node agent", epilog=EPILOG, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--manifests", type=Path, help="directory of Service/EndpointSlice/Node "
                     "YAML, re-read on change")
    src.add_argument("--kubeconfig", help="kubeconfig file (default: clientConnection."
                     "kubeconfig of --config, else the in-cluster service account)")
    add_node_flags(p)
    p.add_argument("--healthz-bind-address", help="HOST:PORT for /healthz (port 0: any)")
    p.add_argument("--metrics-bind-address", help="HOST:PORT for /metrics (port 0: any; "
                   "empty: off)")
    KP.add_flags(p)
    p.set_defaults(func=run)
