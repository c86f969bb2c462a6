"""A directory of manifests as a source: Service, EndpointSlice and Node
objects in *.yaml / *.yml / *.json files (multi-document files and `kind: List`
allowed), re-read whenever a file changes.

A file that cannot be read or parsed keeps contributing the objects it held
when it was last good, so a half-written edit never removes a Service.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from pathlib import Path

from pyagent.manifests import gc_paused, manifest_files, read_file
from pyagent.sources.base import KINDS, Kind, ObjectSink

log = logging.getLogger(__name__)


class ManifestDirectory:
    """Reads a directory, remembering the last good content of each file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Last good objects per file, kept serialised and compressed: only a
        # broken file ever needs them back, and as live dicts they would cost
        # as much memory as the rest of the agent.
        self._good: dict[Path, bytes] = {}
        self._signature: tuple = ()
        self.errors: list[str] = []

    def signature(self) -> tuple:
        sig = []
        for p in manifest_files(self.directory):
            try:
                st = p.stat()
            except OSError:
                continue
            sig.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def changed(self) -> bool:
        return self.signature() != self._signature

    def load(self) -> dict[Kind, list[dict]]:
        self._signature = self.signature()
        errors: list[str] = []
        files = manifest_files(self.directory)
        out: dict[Kind, list[dict]] = {k: [] for k in KINDS}
        with gc_paused():
            for path in files:
                res = read_file(path)
                errors.extend(res.errors)
                objects = res.objects
                if res.broken and path in self._good:
                    errors.append(f"{path.name}: keeping its last good objects")
                    objects = json.loads(zlib.decompress(self._good[path]))
                else:
                    self._good[path] = zlib.compress(json.dumps(objects).encode(), 1)
                for obj in objects:
                    out[obj["kind"]].append(obj)
        for gone in set(self._good) - set(files):
            del self._good[gone]
        self.errors = errors
        for e in errors:
            log.error("%s", e)
        return out


class ManifestSource:
    """Feeds a sink from a directory, polling for changes (cheap: stat only)."""

    def __init__(self, directory: Path, sink: ObjectSink, interval: float = 0.5) -> None:
        self.dir = ManifestDirectory(directory)
        self.sink = sink
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> None:
        objects = self.dir.load()
        for kind in KINDS:
            self.sink.replace(kind, objects[kind])

    def start(self) -> None:
        self.sync_once()
        self._thread = threading.Thread(target=self._loop, name="manifests", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.dir.changed():
                    self.sync_once()
            except Exception:  # never let a bad read kill the source
                log.exception("reading %s failed", self.dir.directory)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
