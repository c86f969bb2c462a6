"""The API client the kube source uses: a kubeconfig file, or the pod's
service account, and kube-proxy's --master (or pyagent.k8sServiceHost/Port)
over either."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The pod's service account, as kubelet mounts it (module attributes: tests
# point them elsewhere).
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def make_api_client(kubeconfig: str | None = None, master: str | None = None) -> Any:
    """An ApiClient: from a kubeconfig file, else the in-cluster service account.

    `master` (kube-proxy's --master, pyagent.k8sServiceHost/Port) replaces the
    server address of either: on a node without kube-proxy the in-cluster
    address is a ClusterIP that only this agent could program. Without a
    kubeconfig and without a service account, `master` alone is used
    unauthenticated, as kube-proxy does."""
    import os
    from urllib.parse import urlsplit

    from kubernetes import client, config
    from kubernetes.config.incluster_config import (
        SERVICE_HOST_ENV_NAME,
        SERVICE_PORT_ENV_NAME,
        InClusterConfigLoader,
    )

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        if master:
            _pin_host(cfg, master.rstrip("/"))
    elif master:
        url = urlsplit(master if "://" in master else f"https://{master}")
        if url.scheme == "https" and os.path.isfile(SA_TOKEN):
            env = {SERVICE_HOST_ENV_NAME: url.hostname or "",
                   SERVICE_PORT_ENV_NAME: str(url.port or 443)}
            InClusterConfigLoader(SA_TOKEN, SA_CA, environ=env).load_and_set(cfg)
        else:
            cfg.host = f"{url.scheme}://{url.netloc}"
    else:
        InClusterConfigLoader(SA_TOKEN, SA_CA).load_and_set(cfg)
    cfg.retries = False  # our backoff decides when to retry
    return client.ApiClient(cfg)


def _pin_host(cfg: Any, host: str) -> None:
    """Set the server address, also across the loader's credential refresh
    hook (which rewrites the whole configuration from the kubeconfig)."""
    cfg.host = host
    hook = cfg.refresh_api_key_hook
    if hook is None:
        return

    def refresh(c: Any) -> None:
        hook(c)  # reinstalls its own hook: put ours back in front
        c.host = host
        c.refresh_api_key_hook = refresh
    cfg.refresh_api_key_hook = refresh


# (method, host, status code or "<error>", seconds): client-go's rest_client_* metrics
RequestObserver = Callable[[str, str, str, float], None]


def instrument(api_client: Any, observe: RequestObserver) -> None:
    """Count and time every request made over the client's connection pool:
    the client's own REST layer and kube_http's raw GETs both go through
    it. A watch is timed until its response headers, as client-go's is."""
    from urllib.parse import urlsplit

    pool = api_client.rest_client.pool_manager
    inner = pool.request
    host = urlsplit(api_client.configuration.host).netloc

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        code = "<error>"
        try:
            resp = inner(method, url, *args, **kwargs)
            code = str(getattr(resp, "status", "<error>"))
            return resp
        except Exception as exc:
            status = getattr(exc, "status", None)
            code = str(status) if status else "<error>"
            raise
        finally:
            observe(method.upper(), host, code, time.monotonic() - start)

    pool.request = request
