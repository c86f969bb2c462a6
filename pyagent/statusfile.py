"""A small JSON file the running agent rewrites after each sync, so operator
commands (`pyagent status`, `pyagent services list`) can name what the maps
hold without talking to the agent. Keyed by the bpffs path: several agents
(labs, tests) on one machine never share one."""

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


def write(bpffs: str, data: dict[str, Any]) -> None:
    path = path_for(bpffs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def read(bpffs: str) -> dict[str, Any] | None:
    try:
        return json.loads(path_for(bpffs).read_text())
    except (OSError, ValueError):
        return None


def remove(bpffs: str) -> None:
    path_for(bpffs).unlink(missing_ok=True)
