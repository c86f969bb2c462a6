"""Where the BPF C sources are: $PYAGENT_BPF_SRC if set, else the checkout's
bpf_src/ (a development tree, editable installs), else the copy an installed
wheel carries as package data (pyagent/bpf_src, see pyproject.toml)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2]  # pyagent/ (this is pyagent/dataplanes/ebpf)


def directory() -> str:
    env = os.environ.get("PYAGENT_BPF_SRC")
    if env:
        return env
    checkout = PACKAGE.parent / "bpf_src"
    if (checkout / "sock_lb.c").is_file():
        return str(checkout)
    return str(PACKAGE / "bpf_src")
