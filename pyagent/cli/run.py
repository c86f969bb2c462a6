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
from pyagent.core.config import LB_ACCELERATIONS, LB_MODES, NodeConfig, load_config
from pyagent.node import heap, wiring

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
    p.add_argument("--bpf-lb-sock-hostns-only", action="store_true",
                   help="the socket LB translates only the host namespace's connections; "
                   "pods' are balanced by TC on --pod-interface, so a sidecar sees the VIP "
                   "(pyagent.socketLBHostNamespaceOnly, Cilium's socketLB.hostNamespaceOnly)")
    p.add_argument("--bpf-lb-mode", choices=LB_MODES,
                   help="NodePort/externalIP/LB traffic to other nodes' backends: snat "
                   "(default), dsr (the backend answers the client directly, which it sees), "
                   "hybrid (DSR for TCP, SNAT for UDP); pyagent.bpfLbMode, Cilium's "
                   "bpf-lb-mode. Every node must run pyagent")
    p.add_argument("--bpf-lb-acceleration", "--xdp", choices=LB_ACCELERATIONS,
                   dest="bpf_lb_acceleration",
                   help="XDP in front of TC on the node interfaces: disabled (default), "
                   "native, generic, best-effort (native, else generic); an interface "
                   "where XDP cannot run is served by TC, with a log line saying why "
                   "(pyagent.bpfLbAcceleration, Cilium's bpf-lb-acceleration)")
    p.add_argument("--bpf-lb-map-max", type=_map_max, metavar="N",
                   help="entries of each eBPF map holding Service state "
                   "(pyagent.bpfLbMapMax; default: the built-in sizes)")
    p.add_argument("--bpf-lb-rev-nat-map-max", type=_map_max, metavar="N",
                   help="rev-NAT entries, hence frontend ids and per-service counters "
                   "(pyagent.bpfLbRevNatMapMax; default: min(--bpf-lb-map-max, 65536))")


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
    if getattr(args, "metrics_per_backend", False):
        changes["metrics_per_backend"] = True
    if getattr(args, "bpf_lb_mode", None):
        changes["bpf_lb_mode"] = args.bpf_lb_mode
    if getattr(args, "bpf_lb_acceleration", None):
        changes["bpf_lb_acceleration"] = args.bpf_lb_acceleration
    if getattr(args, "bpf_lb_sock_hostns_only", False):
        changes["socket_lb_host_ns_only"] = True
    if getattr(args, "bpf_lb_map_max", None):
        changes["bpf_lb_map_max"] = args.bpf_lb_map_max
    if getattr(args, "bpf_lb_rev_nat_map_max", None):
        changes["bpf_lb_rev_nat_map_max"] = args.bpf_lb_rev_nat_map_max
    config = dataclasses.replace(config, **changes)
    if not config.node_name:
        config = dataclasses.replace(config, node_name=socket.gethostname().lower())
    return dataclasses.replace(config, notes=config.notes + tuple(notes))


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
    heap.limit_malloc_arenas()  # before the first thread
    # a warning only: its iptables-save/nft runs need not delay the start
    threading.Thread(target=_warn_leftovers, name="leftovers", daemon=True).start()
    client = None if args.manifests else wiring.api_client(config)
    try:
        config = wiring.resolve_node(config, args.manifests, client,
                                     interfaces_chosen=bool(getattr(args, "interface", None)))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        return wiring.serve(config, args.manifests, client, stop)
    finally:
        if client is not None:
            client.close()


def _warn_leftovers() -> None:
    from pyagent.node import migrate

    try:
        found = migrate.leftovers()
    except Exception:  # noqa: BLE001 - a best-effort hint, never fatal
        log.debug("looking for kube-proxy's leftovers failed", exc_info=True)
        return
    if found:
        log.warning("kube-proxy's state is still here (%s): run `pyagent cleanup "
                    "--kube-proxy` once kube-proxy is stopped (docs/migrate.md)",
                    "; ".join(found))


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
    p.add_argument("--metrics-per-backend", action="store_true",
                   help="also export new connections per backend address (series grow "
                        "with the cluster)")
    KP.add_flags(p)
    p.set_defaults(func=run)
