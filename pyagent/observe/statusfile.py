"""A small JSON file the running agent rewrites after each sync, so operator
commands (`pyagent status`, `pyagent services list`) can name what the maps
hold without talking to the agent. Keyed by the bpffs path: several agents
(labs, tests) on one machine never share one.

The file is mode 0600, owned by the agent's user (root): it names every
Service and frontend on the node, the agent's pid and ports, and error
messages that quote object names and manifest paths, which is the
cluster's inventory; an unprivileged local user (or a container sharing
/run) has no business reading it. The commands that read it need root
anyway, for the pinned maps."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

RUN_DIR = Path(os.environ.get("PYAGENT_RUN_DIR", "/run/pyagent"))


def path_for(bpffs: str) -> Path:
    digest = hashlib.sha256(os.path.realpath(bpffs).encode()).hexdigest()[:16]
    return RUN_DIR / f"status-{digest}.json"


MODE = 0o600


def write(bpffs: str, data: dict[str, Any]) -> None:
    path = path_for(bpffs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a killed agent of the same pid
    # Created 0600 (never readable by others, not even until a chmod) and
    # never through a symlink; the rename makes it visible whole.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    try:
        os.fchmod(fd, MODE)  # whatever the umask
        with os.fdopen(fd, "w") as f:
            fd = -1
            f.write(json.dumps(data))
    finally:
        if fd >= 0:
            os.close(fd)
    tmp.replace(path)


def read(bpffs: str) -> dict[str, Any] | None:
    try:
        return json.loads(path_for(bpffs).read_text())
    except (OSError, ValueError):
        return None


def remove(bpffs: str) -> None:
    path_for(bpffs).unlink(missing_ok=True)
