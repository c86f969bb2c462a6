"""The desired state of one node computed from a manifests directory (or a
snapshot of an API server: core/api_snapshot.py), through the same loader and
ServiceStore the agent runs on (`pyagent plan`, `pyagent trace`, tests): what
it returns is what the dataplanes would apply."""

from __future__ import annotations

from pathlib import Path

from pyagent.core import node_object
from pyagent.core.api_snapshot import Snapshot
from pyagent.core.config import NodeConfig, with_overrides
from pyagent.core.gc_pause import gc_paused
from pyagent.core.manifest_dir import ManifestSet, load_manifests
from pyagent.core.parse import ParseError, object_name
from pyagent.core.sink import KINDS
from pyagent.core.state import DesiredState
from pyagent.core.store import ServiceStore


def load_state(manifests: Path, config: NodeConfig) -> tuple[DesiredState, list[str], NodeConfig]:
    """(state, errors, effective config) for a manifests directory.

    Without configured node IPs, the addresses of the node's Node object are used.
    """
    return state_from(load_manifests(manifests, config.parse_limits), config)  # the agent's


def state_from(loaded: ManifestSet | Snapshot,
               config: NodeConfig) -> tuple[DesiredState, list[str], NodeConfig]:
    """load_state of objects already read (a manifests directory, an API server)."""
    objects = loaded.objects
    node = _node_object(objects["Node"], config.node_name)
    if not config.node_ips:
        config = with_overrides(config, node_ips=node_object.primary_ips(
            node_object.node_ips(node), config.bind_address) or None)
    if config.local_detect_mode == "NodeCIDR":
        config = with_overrides(config, cluster_cidrs=node_object.pod_cidrs(node))
    store = ServiceStore(config, log_invalid=False)  # errors are returned instead
    with gc_paused():
        for kind in KINDS:
            store.replace(kind, objects[kind], refused=loaded.refused[kind],
                          origins=loaded.origins[kind])
        state = store.full_state()
    return state, loaded.errors + list(state.errors), config


def _node_object(nodes: list[dict], node_name: str) -> dict | None:
    for obj in nodes:
        try:
            if node_name and object_name("Node", obj)[1] == node_name:
                return obj
        except ParseError:
            continue
    return None
