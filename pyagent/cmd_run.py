"""`pyagent run`: the node agent."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import socket
import threading
from pathlib import Path

from pyagent.config import NodeConfig, load_config

log = logging.getLogger(__name__)

EPILOG = """examples:
  # on a node, in-cluster (DaemonSet): production defaults
  pyagent run
  # cluster-less, from manifests, into a lab cgroup and bpffs
  pyagent run --manifests examples/demo --node-name node-1 \\
      --cgroup /sys/fs/cgroup/unified/lab --bpffs /tmp/lab/bpffs
"""


def add_node_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that needs a node's configuration."""
    p.add_argument("--config", type=Path, help="KubeProxyConfiguration-style YAML")
    p.add_argument("--node-name", help="this node's name (default: hostname)")
    p.add_argument("--node-ip", action="append", help="an address local to the node")
    p.add_argument("--cluster-cidr", action="append", help="pod CIDR (local traffic detector)")
    p.add_argument("--mode", choices=("ebpf", "iptables", "nftables", "ipvs", "userspace"))
    p.add_argument("--cgroup", help="cgroup v2 path for the socket hooks "
                   "(default: the root of the cgroup2 mount)")
    p.add_argument("--bpffs", help="bpffs directory for pins (default /sys/fs/bpf/pyagent)")
    p.add_argument("--interface", action="append",
                   help="node interface for NodePort/externalIP/LB traffic (TC, repeatable)")
    p.add_argument("--pod-interface", action="append",
                   help="pod-side TC hook: the pod bridge or a pod's host veth (repeatable)")


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The config file, then flags on top of it."""
    config = load_config(args.config)
    changes: dict = {}
    for flag, attr in (("node_name", "node_name"), ("mode", "mode"), ("cgroup", "cgroup"),
                       ("bpffs", "bpffs")):
        if getattr(args, flag, None):
            changes[attr] = getattr(args, flag)
    for flag, attr in (("node_ip", "node_ips"), ("cluster_cidr", "cluster_cidrs"),
                       ("interface", "interfaces"), ("pod_interface", "pod_interfaces")):
        if getattr(args, flag, None):
            changes[attr] = tuple(getattr(args, flag))
    for flag in ("healthz_bind_address", "metrics_bind_address"):
        if getattr(args, flag, None):
            changes[flag] = getattr(args, flag)
    config = dataclasses.replace(config, **changes)
    if not config.node_name:
        config = dataclasses.replace(config, node_name=socket.gethostname())
    return config


def make_dataplane(config: NodeConfig):  # -> Dataplane
    """The dataplane of `config.mode`, after removing what other modes left in
    this node (see pyagent.cmd_cleanup.clean_other_modes: a mode switch)."""
    from pyagent.cmd_cleanup import clean_other_modes

    factories = {
        "ebpf": ("pyagent.dataplanes.ebpf.dataplane", "EbpfDataplane"),
        "iptables": ("pyagent.dataplanes.iptables.dataplane", "IptablesDataplane"),
        "nftables": ("pyagent.dataplanes.nftables.dataplane", "NftablesDataplane"),
        "ipvs": ("pyagent.dataplanes.ipvs.dataplane", "IpvsDataplane"),
        "userspace": ("pyagent.dataplanes.userspace.dataplane", "UserspaceDataplane"),
    }
    if config.mode not in factories:
        raise SystemExit(f"pyagent: unknown mode {config.mode!r}")
    import importlib

    module, cls = factories[config.mode]
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise SystemExit(f"pyagent: mode {config.mode!r} is not available: {exc}") from exc
    for mode in clean_other_modes(config):
        log.info("removed the state of mode %s (mode switch)", mode)
    return factory(config)


def run(args: argparse.Namespace) -> int:
    from pyagent.agent import Agent
    from pyagent.observe import Observability

    config = node_config(args)
    dataplane = make_dataplane(config)
    obs = Observability(config)
    agent = Agent(config, dataplane, observers=[obs])
    obs.attach(agent)
    if args.manifests:
        from pyagent.sources.manifests import ManifestSource

        source = ManifestSource(args.manifests, agent.sink, limits=config.parse_limits)
    else:
        from pyagent.sources.kube import KubeSource

        source = KubeSource(agent.sink, node_name=config.node_name, kubeconfig=args.kubeconfig)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    obs.start()
    source.start()
    log.info("pyagent running: mode=%s node=%s cgroup=%s bpffs=%s", config.mode,
             config.node_name, config.cgroup or "(root)", config.bpffs)
    done.wait()
    log.info("stopping; kernel state stays for the next agent (pyagent cleanup removes it)")
    source.stop()
    agent.stop()
    obs.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the node agent", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--manifests", type=Path, help="directory of Service/EndpointSlice/Node "
                     "YAML, re-read on change")
    src.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config)")
    add_node_flags(p)
    p.add_argument("--healthz-bind-address", help="HOST:PORT for /healthz (port 0: any)")
    p.add_argument("--metrics-bind-address", help="HOST:PORT for /metrics (port 0: any)")
    p.set_defaults(func=run)
