"""Reading a manifests directory into plain API dicts: what `pyagent run
--manifests`, `plan` and `trace` all see.

*.yaml, *.yml and *.json files directly in the directory, in sorted order;
multi-document YAML and `kind: List` are allowed. Files go through the one
bounded loader (pyagent.core.inputs), so every object handed on is JSON data.
Bad content never raises; it is reported naming the file and, where known,
the object:

- a file that cannot be read, parsed, or is over a parse limit is `broken`:
  a reader that remembers (the agent) keeps serving the file's last good
  content; documents before the first syntax error are kept otherwise;
- an object with a usable kind and name that cannot be used (a value JSON
  cannot hold, a document that cannot be constructed) is `refused`: the
  store keeps its last good version, as for any invalid update;
- a document that is not such an object (no kind, no or a bad name, an
  unused kind) is reported and skipped.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyagent.core.gc_pause import gc_paused
from pyagent.core.inputs import (
    DEFAULT_LIMITS,
    BadDocument,
    Loaded,
    ParseLimits,
    check_constructed,
    json_decoder,
    load_text,
    read_text,
)
from pyagent.core.json_list import Deferred, ListText, resolve, scan
from pyagent.core.parse import ParseError, object_name, show
from pyagent.core.sink import KINDS, Kind

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
# JSON files this large are read item by item (pyagent.core.json_list).
LAZY_BYTES = 1 << 20
ObjectKey = tuple[str, str]


@dataclass
class ManifestSet:
    # the objects, or Deferred items of a large JSON List (json_list.resolve)
    by_key: dict[Kind, dict[ObjectKey, Any]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    # Objects the directory has but that cannot be used: key -> reason.
    refused: dict[Kind, dict[ObjectKey, str]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    origins: dict[Kind, dict[ObjectKey, str]] = field(  # the file of each object
        default_factory=lambda: {k: {} for k in KINDS})
    errors: list[str] = field(default_factory=list)  # file and document problems

    @property
    def objects(self) -> dict[Kind, list[dict]]:
        return {k: [resolve(o) for o in self.by_key[k].values()] for k in KINDS}

    def all_errors(self) -> list[str]:
        """Every problem, refused objects included, for printing."""
        return self.errors + [f"{self.origins[k][key]}: {k} {_key_text(key)}: {reason}"
                              for k in KINDS for key, reason in self.refused[k].items()]


@dataclass
class FileResult:
    objects: list[tuple[Kind, ObjectKey, dict]] = field(default_factory=list)
    refused: list[tuple[Kind, ObjectKey, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    broken: bool = False  # unreadable, unparsable or over a limit: its content is incomplete
    # JSON data by construction (inputs.Loaded.json_data): the per-object
    # check (a json.dumps of each) is skipped.
    json_data: bool = False
    packed: bytes = b""  # the file's text, compressed (read_file's keep): _restore parses it


def manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir()
                  if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())


def load_manifests(directory: Path, limits: ParseLimits = DEFAULT_LIMITS) -> ManifestSet:
    """All Service, EndpointSlice and Node objects under `directory`.

    Raises NotADirectoryError only when `directory` itself is missing.
    """
    return ManifestReader(Path(directory), limits, remember=False).load()


class ManifestReader:
    """Reads a directory; with `remember`, a broken file keeps contributing
    the objects it held when it was last good, so a half-written edit never
    removes a Service."""

    def __init__(self, directory: Path, limits: ParseLimits = DEFAULT_LIMITS,
                 remember: bool = True) -> None:
        self.directory = directory
        self.limits = limits
        self.remember = remember
        # Last good text per file, compressed: only a broken file ever needs
        # it back (parsed again), and as live dicts it would cost as much
        # memory as the rest of the agent.
        self._good: dict[Path, bytes] = {}

    def load(self) -> ManifestSet:
        if not Path(self.directory).is_dir():
            raise NotADirectoryError(f"{self.directory}: not a directory")
        files = manifest_files(self.directory)
        out = ManifestSet()
        with gc_paused():
            for path in files:
                try:
                    res = read_file(path, self.limits, keep=self.remember)
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the other files
                    log.exception("%s: internal error while reading", path)
                    res = FileResult(errors=[f"{path.name}: internal error: {exc}"], broken=True)
                out.errors.extend(res.errors)
                if self.remember and res.broken and path in self._good:
                    out.errors.append(f"{path.name}: keeping its last good objects")
                    res = _restore(self._good[path], path, self.limits)
                elif self.remember and res.packed:  # not after an internal error
                    self._good[path] = res.packed
                _merge(out, res, path.name)
        for gone in set(self._good) - set(files):
            del self._good[gone]
        return out


def _restore(blob: bytes, path: Path, limits: ParseLimits) -> FileResult:
    """The file's objects as parsed when it was last good (its problems then
    were reported then: only its objects and refusals are wanted now)."""
    loaded = load_text(zlib.decompress(blob).decode(), path.suffix, path.name, limits)
    res = _result(loaded, path.name)
    res.errors, res.broken = [], False
    return res


def _merge(out: ManifestSet, res: FileResult, fname: str) -> None:
    """Adds one file's objects; an object defined again replaces the earlier one."""
    for kind, key, obj in res.objects:
        _note_duplicate(out, kind, key, fname)
        out.by_key[kind][key] = obj
        out.origins[kind][key] = fname
    for kind, key, reason in res.refused:
        _note_duplicate(out, kind, key, fname)
        out.refused[kind][key] = reason
        out.origins[kind][key] = fname


def _note_duplicate(out: ManifestSet, kind: Kind, key: ObjectKey, fname: str) -> None:
    first = out.origins[kind].get(key)
    if first is None:
        return
    out.errors.append(f"{fname}: {kind} {_key_text(key)}: also defined in {first}; "
                      "the later definition is used")
    out.refused[kind].pop(key, None)
    out.by_key[kind].pop(key, None)


def read_file(path: Path, limits: ParseLimits = DEFAULT_LIMITS, keep: bool = False
              ) -> FileResult:
    """One file's usable objects, refused objects and problems; with `keep`,
    also its text, compressed (for _restore)."""
    text = read_text(path, limits, path.name)
    if isinstance(text, Loaded):
        return _result(text, path.name, keep)
    if path.suffix == ".json" and len(text) >= LAZY_BYTES:
        res = _read_list(text, path.name, limits)
        if res is not None:
            res.packed = zlib.compress(text.encode(), 1) if keep else b""
            return res
    return _result(load_text(text, path.suffix, path.name, limits), path.name, keep)


class _Plain(Exception):
    """The file is not a plain List of JSON data: read it the usual way."""


def _read_list(text: str, fname: str, limits: ParseLimits) -> FileResult | None:
    """A JSON List's objects as Deferred items of its text (pyagent.core.
    json_list); None when the file is anything else or holds a number JSON
    data cannot (the usual path then reads it, with its messages)."""
    finite = [True]
    items = ListText(text)
    res = FileResult(json_data=True)
    kindless: list[int] = []  # items of a typed list (ServiceList): named once its kind is known

    def visit(i: int, item: Any) -> None:
        if not finite[0]:
            raise _Plain
        if isinstance(item, dict) and item.get("kind") is None:
            kindless.append(i)
        else:
            _collect(item, fname, f" (item {i + 1})", res, None, (items, i))

    try:
        if not scan(items, json_decoder(finite), visit) or not finite[0]:
            return None
    except _Plain:
        return None
    kind = items.top.get("kind")
    if not (kind is None or isinstance(kind, str) and kind.endswith("List")) \
            or len(items) > limits.max_objects \
            or 0 < len(kindless) < len(items):  # mixed: the usual path keeps the file order
        return None
    typed = kind[:-len("List")] if isinstance(kind, str) and kind != "List" else None
    for i in kindless:
        _collect(items.item(i), fname, f" (item {i + 1})", res, typed, (items, i))
    return res


def _result(loaded: Loaded, fname: str, keep: bool = False) -> FileResult:
    # The text goes before the objects are collected: it is not alive beside them.
    packed = zlib.compress(loaded.text.encode(), 1) if keep and loaded.text else b""
    loaded.text = ""
    res = FileResult(errors=list(loaded.errors), broken=loaded.broken,
                     json_data=loaded.json_data, packed=packed)
    many = len(loaded.documents) > 1
    for i, doc in enumerate(loaded.documents, 1):
        _collect(doc, fname, f" (document {i})" if many else "", res)
    return res


def _collect(doc: Any, fname: str, at: str, res: FileResult,
             item_kind: str | None = None, deferred: tuple[ListText, int] | None = None
             ) -> None:
    """`at` locates the document for objects that cannot be named; `deferred`:
    doc is that item of a ListText, kept as its text (JSON data by then)."""
    if doc is None:
        return
    if isinstance(doc, BadDocument):
        named = False
        for kind, ns, name in doc.identities:
            key = _usable_key(kind, {"metadata": {"name": name, "namespace": ns}})
            if key is not None:
                res.refused.append((kind, key, doc.reason))  # type: ignore[arg-type]
                named = True
        if not named:
            res.errors.append(f"{fname}: {doc.reason}{at}")
        return
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            _collect(item, fname, f"{at[:-1]}, item {i + 1})" if at else f" (item {i + 1})",
                     res)
        return
    if not isinstance(doc, dict):
        res.errors.append(f"{fname}: expected an object, got {type(doc).__name__}{at}")
        return
    kind = doc.get("kind")
    added = item_kind if item_kind and kind is None else None
    if added:
        # The API's typed lists (ServiceList, ...) leave out each item's kind.
        doc, kind = {**doc, "kind": item_kind}, item_kind
    if (isinstance(kind, str) and kind.endswith("List")) or (
            kind is None and isinstance(doc.get("items"), list)):
        items = doc.get("items")
        if not isinstance(items, list):
            res.errors.append(f"{fname}: {_describe(doc)} without an items list{at}")
            return
        typed = kind[:-len("List")] if isinstance(kind, str) and kind != "List" else None
        for i, item in enumerate(items):
            _collect(item, fname, f"{at[:-1]}, item {i + 1})" if at else f" (item {i + 1})",
                     res, typed)
        return
    if not isinstance(kind, str) or not kind:
        res.errors.append(f"{fname}: {_describe(doc)}: no kind, ignored{at}")
        return
    if kind not in KINDS:
        res.errors.append(f"{fname}: {_describe(doc)}: kind {_describe_kind(kind)} is not "
                          f"used, ignored{at}")
        return
    try:
        key = object_name(kind, doc)
    except ParseError as exc:
        res.errors.append(f"{fname}: {_describe(doc)}: {exc}, ignored{at}")
        return
    if deferred is not None:
        res.objects.append((kind, key, Deferred(*deferred, added)))  # type: ignore[arg-type]
        return
    try:
        obj = doc if res.json_data else check_constructed(doc)
        res.objects.append((kind, key, obj))  # type: ignore[arg-type]
    except ParseError as exc:
        res.refused.append((kind, key, str(exc)))  # type: ignore[arg-type]


def _usable_key(kind: str | None, obj: dict) -> ObjectKey | None:
    if kind not in KINDS:
        return None
    try:
        return object_name(kind, obj)  # type: ignore[arg-type]
    except ParseError:
        return None


def _key_text(key: ObjectKey) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def _describe(doc: dict) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name, ns, kind = meta.get("name"), meta.get("namespace"), doc.get("kind")
    name = name if isinstance(name, str) and name else "<unnamed>"
    kind = kind if isinstance(kind, str) and kind else "object"
    text = f"{kind} {ns}/{name}" if isinstance(ns, str) and ns else f"{kind} {name}"
    return text if text.isprintable() and len(text) <= 200 else show(text, 200)


def _describe_kind(kind: str) -> str:
    return kind if kind.isprintable() and len(kind) <= 100 else show(kind)
