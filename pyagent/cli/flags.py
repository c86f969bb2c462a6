"""Command-line flags shared by several commands, and the node configuration
they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyagent.cli import kubeproxy_flags as KP
from pyagent.core.config import NodeConfig, load_config, with_overrides
from pyagent.core.state import DesiredState


def resolve_config(args: argparse.Namespace) -> NodeConfig:
    """The config file, overridden by the flags given (kube-proxy's too)."""
    config = KP.apply(args, load_config(args.config, mode=KP.flag_mode(args)))
    cidrs = KP.pyagent_cluster_cidrs(getattr(args, "cluster_cidr", None))
    if cidrs is not None and config.local_detect_mode != "ClusterCIDR":
        cidrs = None
    return with_overrides(config, node_name=getattr(args, "node_name", None),
                          node_ips=tuple(args.node_ip) if getattr(args, "node_ip", None) else None,
                          cluster_cidrs=cidrs, mode=getattr(args, "mode", None))


def source_of(args: argparse.Namespace, config: NodeConfig) -> tuple[Path | None, str | None]:
    """(manifests, kubeconfig) to read: the flags, else the config file's
    clientConnection.kubeconfig. With --manifests a --kubeconfig (kube-proxy's
    command lines carry one) is not used. ValueError when there is neither."""
    if args.manifests is not None:
        return args.manifests, None
    kubeconfig = getattr(args, "kubeconfig", None) or config.kubeconfig
    if not kubeconfig:
        raise ValueError("give --manifests DIR or --kubeconfig FILE (or a --config with "
                         "clientConnection.kubeconfig)")
    return None, kubeconfig


def load_node_state(args: argparse.Namespace, config: NodeConfig,
                    ) -> tuple[DesiredState, list[str], NodeConfig]:
    """core/planner's (state, errors, config) from --manifests or an API server."""
    from pyagent.core.planner import load_state, state_from

    manifests, kubeconfig = source_of(args, config)
    if manifests is not None:
        return load_state(manifests, config)
    from pyagent.sources.kube_snapshot import snapshot

    return state_from(snapshot(kubeconfig, config.node_name, config.api_server), config)
