"""A directory of manifests as a source: Service, EndpointSlice and Node
objects in *.yaml / *.yml / *.json files (multi-document files and `kind: List`
allowed), re-read whenever a file changes.

A file that cannot be read or parsed keeps contributing the objects it held
when it was last good, so a half-written edit never removes a Service; an
object that cannot be used keeps its last good version in the store. What
the last read could not apply is reported to the sink (`report`), which
exports it as the `pyagent_source_errors` gauge.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pyagent.core.inputs import DEFAULT_LIMITS, ParseLimits
from pyagent.core.json_list import resolve
from pyagent.core.manifest_dir import ManifestReader, ManifestSet, manifest_files
from pyagent.core.sink import KINDS, ObjectSink

log = logging.getLogger(__name__)
LOGGED = 100  # problems logged per read: a file of 200,000 bad documents must not flood
PAGE = 500  # objects per replace() to a sink that accepts pages


class ManifestDirectory(ManifestReader):
    """A ManifestReader that also notices changes (stat only: cheap)."""

    def __init__(self, directory: Path, limits: ParseLimits = DEFAULT_LIMITS) -> None:
        super().__init__(directory, limits, remember=True)
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

    def forget_signature(self) -> None:
        self._signature = ()

    def load(self) -> ManifestSet:
        self._signature = self.signature()
        out = super().load()
        self.errors = out.all_errors()
        for e in self.errors[:LOGGED]:
            log.error("%s", e)
        if len(self.errors) > LOGGED:
            log.error("... and %d more problems in %s", len(self.errors) - LOGGED,
                      self.directory)
        return out


class ManifestSource:
    """Feeds a sink from a directory, polling for changes."""

    def __init__(self, directory: Path, sink: ObjectSink, interval: float = 0.5,
                 limits: ParseLimits = DEFAULT_LIMITS) -> None:
        self.dir = ManifestDirectory(directory, limits)
        self.sink = sink
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> None:
        loaded = self.dir.load()
        self.sink.report(loaded.errors)
        paged = getattr(self.sink, "accepts_pages", False)
        for kind in KINDS:
            objects = list(loaded.by_key[kind].values())
            loaded.by_key[kind].clear()
            if not paged:
                self.sink.replace(kind, [resolve(o) for o in objects],
                                  refused=loaded.refused[kind],
                                  origins=loaded.origins[kind])
                continue
            # In pages, each dropped here once the sink has it: the raw objects
            # go while the parsed ones grow, instead of both being alive at once.
            n = len(objects)
            for start in range(0, max(n, 1), PAGE):
                page = [resolve(o) for o in objects[start:start + PAGE]]
                objects[start:start + PAGE] = [None] * len(page)
                last = start + PAGE >= n
                self.sink.replace(kind, page, refused=loaded.refused[kind] if last else None,
                                  origins=loaded.origins[kind], first=start == 0, last=last)
                del page

    def start(self) -> None:
        self.sync_once()
        self._thread = threading.Thread(target=self._loop, name="manifests", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.dir.changed():
                    self.sync_once()
            except Exception as exc:  # never let a bad read kill the source
                log.exception("reading %s failed", self.dir.directory)
                self.dir.forget_signature()  # retry at the next poll, not at the next change
                self.sink.report([f"{self.dir.directory}: {exc}"])

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def connectivity(self) -> dict:
        """For `pyagent status`: the directory stands in for the API server."""
        ok = self.dir.directory.is_dir()
        return {"kind": "manifests", "where": str(self.dir.directory), "connected": ok,
                "synced": ok, "problem": "" if ok else "directory missing"}
