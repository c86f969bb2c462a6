"""Reading a manifests directory into plain API dicts.

*.yaml, *.yml and *.json files directly in the directory, in sorted order;
multi-document YAML and `kind: List` are allowed. Bad content never raises:
it is reported in `errors`, naming the file and, where known, the object.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyagent.sources.base import KINDS, Kind

SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster


@dataclass
class ManifestSet:
    objects: dict[Kind, list[dict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Bulk loading allocates millions of long-lived containers; the cyclic
    collector would rescan them all over and over (about a third of the time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir()
                  if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())


def load_manifests(directory: Path) -> ManifestSet:
    """All Service, EndpointSlice and Node objects under `directory`.

    Raises NotADirectoryError only when `directory` itself is missing.
    """
    if not Path(directory).is_dir():
        raise NotADirectoryError(f"{directory}: not a directory")
    out = ManifestSet()
    with gc_paused():
        for path in manifest_files(directory):
            for doc in _documents(path, out.errors):
                _collect(doc, path.name, out)
    return out


@dataclass
class FileResult:
    objects: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    broken: bool = False  # unreadable or unparsable: its content is incomplete


def read_file(path: Path) -> FileResult:
    """One file's objects, for sources that keep a broken file's last good content."""
    errors: list[str] = []
    docs = _documents(path, errors)
    broken = bool(errors)
    out = ManifestSet(errors=errors)
    for doc in docs:
        _collect(doc, path.name, out)
    return FileResult([o for k in KINDS for o in out.objects[k]], out.errors, broken)


def _documents(path: Path, errors: list[str]) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{path.name}: cannot read: {exc}")
        return []
    if path.suffix == ".json":
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}: invalid JSON: {exc}")
            return []
    docs = []
    try:
        # Documents before a broken one are kept: one typo at the end of a
        # file should not make everything above it vanish.
        for doc in yaml.load_all(text, Loader=_Loader):
            docs.append(doc)
    except yaml.YAMLError as exc:
        errors.append(f"{path.name}: invalid YAML: {' '.join(str(exc).split())}")
    return docs


def _collect(doc: Any, fname: str, out: ManifestSet) -> None:
    if doc is None:
        return
    if isinstance(doc, list):
        for item in doc:
            _collect(item, fname, out)
        return
    if not isinstance(doc, dict):
        out.errors.append(f"{fname}: expected an object, got {type(doc).__name__}")
        return
    kind = doc.get("kind")
    if (isinstance(kind, str) and kind.endswith("List")) or (
            kind is None and isinstance(doc.get("items"), list)):
        items = doc.get("items")
        if not isinstance(items, list):
            out.errors.append(f"{fname}: {kind} without an items list")
            return
        # The API's typed lists (ServiceList, ...) leave out each item's kind.
        item_kind = kind[:-len("List")] if kind and kind != "List" else None
        for item in items:
            if item_kind and isinstance(item, dict) and "kind" not in item:
                item = {**item, "kind": item_kind}
            _collect(item, fname, out)
        return
    if kind in KINDS:
        out.objects[kind].append(doc)
    elif not isinstance(kind, str) or not kind:
        out.errors.append(f"{fname}: {_describe(doc)}: no kind")
    else:
        out.errors.append(f"{fname}: {_describe(doc)}: kind {kind} is not used, ignored")


def _describe(doc: dict) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") or "<unnamed>"
    ns = meta.get("namespace")
    kind = doc.get("kind") or "object"
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
