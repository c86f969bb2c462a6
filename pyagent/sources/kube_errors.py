"""What the API server's failures mean, in one line each (pyagent/sources/kube.py).

urllib3 nests a connection failure several levels deep (MaxRetryError ->
SSLError -> SSLEOFError...), and an API error carries a JSON Status body:
the reflectors log the innermost cause or the Status message, never a
traceback. "Too large resource version" (the server's etcd went back, e.g.
restored from a backup) is recognised so the reflector relists at once.
"""

from __future__ import annotations

import json


def _status_body(exc: BaseException) -> dict:
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def too_large_status(status: dict) -> bool:
    """The Status the API server sends for a resourceVersion it does not
    have yet (504 "Too large resource version", cause ResourceVersionTooLarge)."""
    causes = (status.get("details") or {}).get("causes") or []
    return (any(isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge"
                for c in causes)
            or "too large resource version" in str(status.get("message", "")).lower())


def too_large(exc: BaseException) -> bool:
    return getattr(exc, "status", None) in (504, 500) and too_large_status(_status_body(exc))


def status_message(exc: BaseException) -> str:
    message = _status_body(exc).get("message") or getattr(exc, "reason", "")
    return f"HTTP {getattr(exc, 'status', '?')}: {message}"


def older(rv: str, than: str) -> bool:
    """Whether resourceVersion `rv` is below `than` (they are etcd revisions;
    an opaque one is never called older)."""
    try:
        return bool(than) and int(rv) < int(than)
    except ValueError:
        return False


def describe_error(exc: BaseException) -> str:
    """One short line for a failed request: the HTTP status, or the innermost
    cause of a connection failure (urllib3 nests them: MaxRetryError ->
    SSLError -> SSLEOFError...), never a traceback or a multi-line body."""
    status = getattr(exc, "status", None)
    if status:
        text = f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
        message = _status_body(exc).get("message")
        return _squeeze(f"{text}: {message}" if message else text)
    inner: BaseException = exc
    seen = set()
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = getattr(inner, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = inner.__cause__ or inner.__context__
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    what = "API server unreachable" if inner is not exc or _is_connection(exc) else \
        type(exc).__name__
    detail = str(inner.args[-1] if isinstance(inner, OSError) and inner.args else inner)
    return _squeeze(f"{what} ({type(inner).__name__}: {detail})")


def _is_connection(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3")


def _squeeze(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
