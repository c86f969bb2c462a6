"""The API server's objects now (core/api_snapshot.py): the agent's own
KubeSource lists Services, EndpointSlices and this node's Node (with the
agent's label selector and paging) into a collecting sink, then stops. No
watch stays open."""

from __future__ import annotations

from pyagent.core.api_snapshot import CollectingSink, Snapshot

TIMEOUT = 30.0  # seconds for every kind's first complete list


def snapshot(kubeconfig: str | None, node_name: str, master: str | None = None,
             timeout: float | None = None) -> Snapshot:
    """OSError naming the server when it does not answer within timeout
    (default TIMEOUT)."""
    timeout = TIMEOUT if timeout is None else timeout
    from pyagent.sources.kube import KubeSource
    from pyagent.sources.kube_client import make_api_client

    snap = Snapshot()
    client = make_api_client(kubeconfig, master)
    src = KubeSource(CollectingSink(snap), node_name=node_name or "-", api_client=client)
    try:
        src.start()
        ok = src.wait_synced(timeout)
    finally:
        src.stop()
        client.close()
    if not ok:
        missing = [k for k, done in src.synced.items() if not done]
        raise OSError(f"API server {client.configuration.host}: no complete list of "
                      f"{', '.join(missing)} within {timeout:.0f}s")
    return snap
