"""Kernel headers for BCC inside the node image.

BCC compiles against /lib/modules/$(uname -r)/build (and .../source). In the
DaemonSet the node's /lib/modules is mounted read-only at /host/lib/modules
($PYAGENT_HOST_MODULES): managed node OSes ship no headers there, and where
a node has them, its build link points into the node's /usr/src, which the
pod does not see. So at start, `pyagent run` builds the image's own
/lib/modules/<release>: every entry of the node's directory linked (modules,
modules.dep... for modprobe), and build/source linked to the node's headers
when they resolve inside the pod, else to the Debian generic headers the
image carries (/usr/src/linux-headers-*-amd64 and its -common tree: what BCC
needs are UAPI and helper definitions, which a generic tree provides; the
same fallback deploy/setup.sh makes on a development machine).

Nothing happens without $PYAGENT_HOST_MODULES (a checkout, a test) or when
/lib/modules/<release>/build already resolves.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


def _version_key(path: Path) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def generic_headers(src: Path = Path("/usr/src")) -> tuple[Path, Path] | None:
    """(build, source) of the newest generic headers tree under `src`."""
    trees = sorted((d for pattern in ("linux-headers-*-amd64", "linux-headers-*-arm64",
                                      "linux-headers-*-generic")
                    for d in src.glob(pattern) if (d / "include").is_dir()), key=_version_key)
    if not trees:
        return None
    build = trees[-1]
    stem = build.name.rsplit("-", 1)[0]
    for candidate in (src / f"{stem}-common", src / stem, build):
        if candidate.is_dir():
            return build, candidate
    return build, build


def ensure(release: str | None = None, host_modules: str | None = None,
           modules: Path = Path("/lib/modules"), src: Path = Path("/usr/src")) -> str:
    """Make /lib/modules/<release>/build usable; returns what was done (one line)."""
    release = release or os.uname().release
    host = host_modules if host_modules is not None else os.environ.get("PYAGENT_HOST_MODULES")
    mod = modules / release
    if (mod / "build" / "include").is_dir():
        return f"kernel headers: {mod / 'build'}"
    if not host:
        return f"kernel headers: none at {mod / 'build'} (BCC will fail to compile)"
    host_mod = Path(host) / release
    mod.mkdir(parents=True, exist_ok=True)
    if host_mod.is_dir():
        for entry in host_mod.iterdir():
            link = mod / entry.name
            if entry.name not in ("build", "source") and not link.exists():
                link.symlink_to(entry)
    for name in ("build", "source"):
        with_link = mod / name
        if with_link.is_symlink() or with_link.exists():
            with_link.unlink()
    node_build = host_mod / "build"
    if (node_build / "include").is_dir():  # the node's own headers, visible in the pod
        (mod / "build").symlink_to(node_build.resolve())
        node_source = host_mod / "source"
        if node_source.is_dir():
            (mod / "source").symlink_to(node_source.resolve())
        return f"kernel headers: the node's, {node_build.resolve()}"
    generic = generic_headers(src)
    if generic is None:
        return f"kernel headers: the node has none for {release} and the image none either"
    build, source = generic
    (mod / "build").symlink_to(build)
    (mod / "source").symlink_to(source)
    return f"kernel headers: the node has none for {release}; using the image's {build.name}"
