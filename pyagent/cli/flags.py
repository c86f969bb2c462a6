"""Command-line flags shared by several commands, and the node configuration
they make."""

from __future__ import annotations

import argparse

from pyagent.cli import kubeproxy_flags as KP
from pyagent.core.config import NodeConfig, load_config, with_overrides


def resolve_config(args: argparse.Namespace) -> NodeConfig:
    """The config file, overridden by the flags given (kube-proxy's too)."""
    config = KP.apply(args, load_config(args.config, mode=KP.flag_mode(args)))
    cidrs = KP.pyagent_cluster_cidrs(getattr(args, "cluster_cidr", None))
    if cidrs is not None and config.local_detect_mode != "ClusterCIDR":
        cidrs = None
    return with_overrides(config, node_name=getattr(args, "node_name", None),
                          node_ips=tuple(args.node_ip) if getattr(args, "node_ip", None) else None,
                          cluster_cidrs=cidrs, mode=getattr(args, "mode", None))
