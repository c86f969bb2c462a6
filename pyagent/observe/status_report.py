"""What the running agent adds to its status file for `pyagent status`:
version, where its objects come from and whether that source answers, the
age of the last event, and the addresses its HTTP servers listen on."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyagent.core.config import NodeConfig

# The source's own account: {"kind", "where", "connected", "synced", "problem"}
# (ManifestSource.connectivity, KubeSource.connectivity; set by node/wiring.py).
Connectivity = Callable[[], dict[str, Any]]


def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyagent")
    except PackageNotFoundError:
        return "(not installed)"


def source_state(connectivity: Connectivity | None) -> dict[str, Any]:
    if connectivity is None:
        return {"kind": "none", "connected": False}
    return connectivity()


def address(bind: str, port: int) -> str:
    """The bind address with the port actually bound ("" when off)."""
    if not bind or not port:
        return ""
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    return f"{host}:{port}"


def fields(config: NodeConfig, connectivity: Connectivity | None, last_event: float | None,
           healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "version": agent_version(),
        "source": source_state(connectivity),
        "lastEvent": last_event,
        "syncPeriod": config.sync_period,
        "healthzAddress": address(config.healthz_bind_address or "", healthz_port),
        "metricsAddress": address(config.metrics_bind_address or "", metrics_port),
        "written": time.time(),
    }
