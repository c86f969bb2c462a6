"""pyproject.toml lists the packages explicitly (the BPF sources are mapped
into the package from the top-level bpf_src/): none may be forgotten."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_package_is_in_the_wheel() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("pyagent", "ebpf") for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, found - listed
    assert conf["package-dir"] == {"pyagent.bpf_src": "bpf_src"}
    data = conf["package-data"]
    shipped = {p.relative_to(ROOT / "bpf_src") for pattern in ("*.c", "*.h", "lib/*.h")
               for p in (ROOT / "bpf_src").glob(pattern)}
    every = {p.relative_to(ROOT / "bpf_src") for p in (ROOT / "bpf_src").rglob("*")
             if p.is_file()}
    assert shipped == every, every - shipped  # a new kind of file needs a pattern
    assert data == {"pyagent.bpf_src": ["*.c", "*.h"], "pyagent.bpf_src.lib": ["*.h"]}
