"""GET (and, for Events, POST) requests to the API server over the kubernetes client's connection
pool and credentials, without its generated API classes: importing
CoreV1Api and DiscoveryV1Api builds hundreds of model classes (about 5 s
and 20 MiB of the agent's start on the test machine) for requests whose
answers pyagent reads raw anyway. Errors carry what the client's
ApiException carries (status, reason, body), which kube_errors reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode


class ApiError(Exception):
    """A non-2xx answer: `status`, `reason` and the (Status JSON) `body`."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.body = status, reason, body


def _param(name: str) -> str:
    """The API's query name of a client-style keyword (label_selector,
    _continue, allow_watch_bookmarks...)."""
    head, *rest = name.lstrip("_").split("_")
    return head + "".join(word.capitalize() for word in rest)


def _value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _headers(api_client: Any) -> dict[str, str]:
    headers = {"Accept": "application/json", **getattr(api_client, "default_headers", {})}
    for auth in api_client.configuration.auth_settings().values():  # refreshes a token
        if auth.get("in") == "header" and auth.get("value"):
            headers[auth["key"]] = auth["value"]
    return headers


def post(api_client: Any, path: str, body: dict, timeout: float = 10.0) -> dict:
    """POST `body` as JSON to `path`; the created object, or ApiError."""
    import json

    import urllib3

    url = api_client.configuration.host.rstrip("/") + quote(path)
    resp = api_client.rest_client.pool_manager.request(
        "POST", url, body=json.dumps(body).encode(), timeout=urllib3.Timeout(total=timeout),
        headers={**_headers(api_client), "Content-Type": "application/json"})
    text = resp.data.decode("utf-8", "replace")
    if not 200 <= resp.status <= 299:
        raise ApiError(resp.status, resp.reason or "", text)
    return json.loads(text or "{}")


def getter(api_client: Any, path: str) -> Callable[..., Any]:
    """A function GETting `path`: keyword arguments are query parameters
    (None ones left out) plus `_request_timeout` (seconds, or (connect,
    read)); it returns the unread urllib3 response, or raises ApiError."""
    import urllib3

    cfg = api_client.configuration

    def get(_request_timeout: Any = None, **params: Any) -> Any:
        query = urlencode([(_param(k), _value(v)) for k, v in params.items() if v is not None])
        headers = _headers(api_client)
        timeout = None
        if isinstance(_request_timeout, tuple):
            timeout = urllib3.Timeout(connect=_request_timeout[0], read=_request_timeout[1])
        elif _request_timeout:
            timeout = urllib3.Timeout(total=_request_timeout)
        url = cfg.host.rstrip("/") + quote(path) + (f"?{query}" if query else "")
        resp = api_client.rest_client.pool_manager.request(
            "GET", url, headers=headers, timeout=timeout, preload_content=False)
        if not 200 <= resp.status <= 299:
            try:
                body = resp.data.decode("utf-8", "replace")
            finally:
                resp.release_conn()
            raise ApiError(resp.status, resp.reason or "", body)
        return resp
    return get
