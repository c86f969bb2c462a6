"""Input files (manifests, config files, trace flows) to JSON data, at a
bounded cost. The one loader behind `run`, `plan` and `trace`.

What it returns is what the API server could hold: mappings with string
keys, lists, strings, finite numbers, booleans and null. YAML's extras are
mapped the way kubectl's YAML-to-JSON step treats them where that is
lossless (a timestamp stays the text it was written as, like
`deployed: 2024-01-01`), and are otherwise left as `NotJSON` markers that
`json_data` refuses with the path and the reason (`!!binary`, `!!set`,
`!!python/...` and other tags, `.inf`/`.nan`, mapping keys that are not
strings).

Cost is bounded per file (ParseLimits): its size, its number of documents,
and its number of YAML nodes counted as if every alias were expanded, with
a separate budget for what aliases add. PyYAML itself
shares an aliased value instead of copying it, but everything downstream
(JSON encoding, fingerprints, deep copies) pays for the expanded tree: a
538-byte file of nested aliases expanded to gigabytes. libyaml caps nesting
at 1000 levels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pyagent.core.parse import ParseError, show

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster


@dataclass(frozen=True)
class ParseLimits:
    """Per input file; config key `pyagent.parseLimits` (camelCase names)."""
    max_file_bytes: int = 64 << 20
    max_objects: int = 200_000  # documents, and the items of List documents
    max_nodes: int = 20_000_000  # YAML nodes, aliases expanded
    max_alias_nodes: int = 1_000_000  # of those, the nodes that aliases add

    KEYS: ClassVar[dict[str, str]] = {
        "maxFileBytes": "max_file_bytes", "maxObjects": "max_objects",
        "maxNodes": "max_nodes", "maxAliasNodes": "max_alias_nodes"}

    @classmethod
    def from_dict(cls, data: object) -> ParseLimits:
        """From the config block; raises ParseError naming the bad key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ParseError("pyagent.parseLimits: expected a mapping")
        values = {}
        for key, value in data.items():
            if key not in cls.KEYS:
                raise ParseError(f"pyagent.parseLimits: unknown key {show(key)} "
                                 f"(one of {', '.join(cls.KEYS)})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParseError(f"pyagent.parseLimits.{key}: expected a positive integer, "
                                 f"got {show(value)}")
            values[cls.KEYS[key]] = value
        return cls(**values)


DEFAULT_LIMITS = ParseLimits()


class NotJSON:
    """A YAML value JSON cannot hold; `json_data` refuses it with `what`.
    Also stands in for a mapping key that is not a string (`key`)."""
    __slots__ = ("what", "key")

    def __init__(self, what: str, key: bool = False) -> None:
        self.what, self.key = what, key

    def __repr__(self) -> str:
        return self.what


# --- YAML construction ---------------------------------------------------------------

class _Loader(_Base):
    """libyaml's safe loader whose constructors never produce non-JSON
    Python objects (dates, sets, bytes) and never fail on unknown tags."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            self.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if type(key) is not str:  # a marker, so json.dumps alone refuses the object
                key = _bad_key(key, key_node)
            out[key] = self.construct_object(value_node, deep=deep)
        return out


def _bad_key(key: object, node: Node) -> NotJSON:
    if isinstance(key, NotJSON):
        return NotJSON(f"mapping key: {key.what} cannot be held in JSON")
    if not isinstance(node, ScalarNode):
        return NotJSON(f"a {node.id} as a mapping key is not a string")
    text = node.value or "~"
    text = text if text.isprintable() and len(text) <= 40 else show(text)
    return NotJSON(f"mapping key {text} ({_type_name(key)}) is not a string; quote it",
                   key=True)


def _text(loader: _Loader, node: Node) -> str:
    # What kubectl's YAML-to-JSON step keeps for a timestamp: its text.
    return loader.construct_scalar(node)


def _int(loader: _Loader, node: Node) -> int | NotJSON:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:  # Python refuses ints of more than 4300 digits
        return NotJSON(f"an integer of {len(str(node.value))} digits")


def _float(loader: _Loader, node: Node) -> float | NotJSON:
    value = yaml.constructor.SafeConstructor.construct_yaml_float(loader, node)
    if not math.isfinite(value):
        return NotJSON(f"the number {show(node.value)} (JSON numbers are finite)")
    return value


def _refuse(what: str) -> Any:
    def construct(loader: _Loader, node: Node) -> NotJSON:
        return NotJSON(what)
    return construct


def _unknown(loader: _Loader, node: Node) -> NotJSON:
    return NotJSON(f"a value tagged {show(node.tag)}")


_Y = "tag:yaml.org,2002:"
_Loader.add_constructor(_Y + "timestamp", _text)
_Loader.add_constructor(_Y + "value", _text)  # a plain "=" is a string
_Loader.add_constructor(_Y + "int", _int)
_Loader.add_constructor(_Y + "float", _float)
_Loader.add_constructor(_Y + "binary", _refuse("binary data (!!binary)"))
_Loader.add_constructor(_Y + "set", _refuse("a set (!!set)"))
_Loader.add_constructor(_Y + "omap", _refuse("an ordered map (!!omap)"))
_Loader.add_constructor(_Y + "pairs", _refuse("a list of pairs (!!pairs)"))
_Loader.add_constructor(None, _unknown)  # !!python/..., local tags, anything else


# --- the node budget -------------------------------------------------------------------

def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class RecursiveAlias(ParseError):
    pass


def expanded_size(root: Node, cap: int) -> tuple[int, int]:
    """(nodes with every alias expanded, distinct nodes) of a composed
    document; stops early with ParseError beyond `cap`, or on an alias that
    contains itself. Linear in the distinct nodes (sizes are memoised)."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()  # on the current path: a node seen again there is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            entered.discard(nid)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            if total > cap:
                raise ParseError(f"expands to more than {cap:,} YAML nodes")
            sizes[nid] = total
            continue
        if nid in sizes:
            continue
        if nid in entered:
            raise RecursiveAlias("an alias that contains itself (recursive data)")
        entered.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)], len(sizes)


def _scalar(node: Node | None, *path: str) -> str | None:
    """The plain string at `path` under a mapping node, if there is one."""
    for key in path:
        if not isinstance(node, MappingNode):
            return None
        node = next((v for k, v in node.value
                     if isinstance(k, ScalarNode) and k.value == key), None)
    return node.value if isinstance(node, ScalarNode) and node.tag == _Y + "str" else None


def node_identities(node: Node) -> list[tuple[str | None, str | None, str | None]]:
    """(kind, namespace, name) of a document's objects, read from the
    composed nodes (for documents that could not be constructed)."""
    items = None
    if isinstance(node, MappingNode):
        items = next((v for k, v in node.value
                      if isinstance(k, ScalarNode) and k.value == "items"), None)
    kind = _scalar(node, "kind")
    if isinstance(items, SequenceNode):
        item_kind = kind[:-len("List")] if kind and kind.endswith("List") and kind != "List" \
            else None
        return [(_scalar(i, "kind") or item_kind, _scalar(i, "metadata", "namespace"),
                 _scalar(i, "metadata", "name")) for i in items.value]
    return [(kind, _scalar(node, "metadata", "namespace"), _scalar(node, "metadata", "name"))]


# --- documents -------------------------------------------------------------------------------

@dataclass
class BadDocument:
    """A document that could not be constructed (e.g. `!!int [80]`)."""
    reason: str
    identities: list[tuple[str | None, str | None, str | None]]


@dataclass
class Loaded:
    documents: list[Any] = field(default_factory=list)  # data (may hold NotJSON) or BadDocument
    errors: list[str] = field(default_factory=list)  # each names the file
    broken: bool = False  # unreadable, unparsable or over a limit: the content is incomplete
    # JSON data throughout (JSON text without an out-of-range number): the
    # per-object check_constructed can be skipped.
    json_data: bool = False
    text: str = ""  # what was parsed (load_text parses it again)


def load_file(path: Path, limits: ParseLimits = DEFAULT_LIMITS, label: str | None = None
              ) -> Loaded:
    """The documents of a YAML or JSON (by suffix) file; messages start with
    `label` (default: the file's name). Never raises."""
    name = label or path.name
    text = read_text(path, limits, name)
    return text if isinstance(text, Loaded) else load_text(text, path.suffix, name, limits)


def read_text(path: Path, limits: ParseLimits, name: str) -> str | Loaded:
    """The file's text, or a broken Loaded saying why it cannot be read."""
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ParseError(f"{size:,} bytes, more than the limit of {limits.max_file_bytes:,} "
                             "(pyagent.parseLimits.maxFileBytes)")
        with path.open("rb") as f:  # the file may grow between stat() and read()
            raw = f.read(limits.max_file_bytes + 1)
        if len(raw) > limits.max_file_bytes:
            raise ParseError(f"more than the limit of {limits.max_file_bytes:,} bytes "
                             "(pyagent.parseLimits.maxFileBytes)")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, ParseError) as exc:
        return Loaded(errors=[f"{name}: cannot read: {exc}"], broken=True)


def load_text(text: str, suffix: str, name: str, limits: ParseLimits = DEFAULT_LIMITS
              ) -> Loaded:
    """The documents of `text` as load_file parses a file with `suffix` and
    name `name` (the file's content as read earlier). Never raises."""
    out = Loaded(text=text)
    if suffix == ".json":
        _load_json(text, name, limits, out)
    else:
        _load_yaml(text, name, limits, out)
    return out


def json_decoder(finite: list[bool]) -> json.JSONDecoder:
    """A decoder for manifests: NaN/Infinity refused (not JSON); a number out
    of range (1e999, refused later, per object) sets finite[0] to False."""
    def number(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            finite[0] = False
        return value
    return json.JSONDecoder(parse_constant=_no_constant, parse_float=number)


def _load_json(text: str, name: str, limits: ParseLimits, out: Loaded) -> None:
    finite = [True]
    try:
        doc = json_decoder(finite).decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        out.errors.append(f"{name}: invalid JSON: {_oneline(exc)}")
        out.broken = True
        return
    out.json_data = finite[0]
    items = doc.get("items") if isinstance(doc, dict) else doc
    if isinstance(items, list) and len(items) > limits.max_objects:
        out.errors.append(f"{name}: more than {limits.max_objects:,} objects "
                          "(pyagent.parseLimits.maxObjects)")
        out.broken = True
        return
    out.documents.append(doc)


def _object_count(node: Node) -> int:
    """Objects in a document: the items of a List (or a top-level sequence), else 1."""
    if isinstance(node, SequenceNode):
        return len(node.value)
    items = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == "items"),
                 None) if isinstance(node, MappingNode) else None
    return len(items.value) if isinstance(items, SequenceNode) else 1


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _load_yaml(text: str, name: str, limits: ParseLimits, out: Loaded) -> None:
    loader = _Loader(text)
    nodes = aliased = objects = 0
    index = 0
    check_aliases = "*" in text  # no alias indicator, no expansion to count
    try:
        while loader.check_node():
            index += 1
            node = loader.get_node()
            if node is None:
                continue
            objects += _object_count(node)
            if objects > limits.max_objects:
                raise ParseError(f"more than {limits.max_objects:,} objects "
                                 "(pyagent.parseLimits.maxObjects)")
            if check_aliases:
                try:
                    size, distinct = expanded_size(node, limits.max_nodes - nodes)
                except RecursiveAlias as exc:
                    out.documents.append(BadDocument(str(exc), node_identities(node)))
                    continue
                except ParseError as exc:
                    raise ParseError(f"document {index}{_ids(node)}: {exc} "
                                     "(pyagent.parseLimits.maxNodes)") from None
                nodes += size
                aliased += size - distinct
                if aliased > limits.max_alias_nodes:
                    raise ParseError(
                        f"document {index}{_ids(node)}: aliases expand to more than "
                        f"{limits.max_alias_nodes:,} YAML nodes in this file "
                        "(pyagent.parseLimits.maxAliasNodes)")
            try:
                out.documents.append(loader.construct_document(node))
            except yaml.constructor.ConstructorError as exc:
                # The parser is at the next document: go on with it.
                loader.constructed_objects, loader.recursive_objects = {}, {}
                loader.state_generators = []
                out.documents.append(BadDocument(_oneline(exc), node_identities(node)))
    except ParseError as exc:
        out.errors.append(f"{name}: {exc}")
        out.broken = True
    except (yaml.YAMLError, RecursionError) as exc:
        # Documents before a broken one are kept: one typo at the end of a
        # file should not make everything above it vanish.
        out.errors.append(f"{name}: invalid YAML: {_oneline(exc)}")
        out.broken = True
    finally:
        loader.dispose()


def _ids(node: Node) -> str:
    found = [f"{k or 'object'} {ns + '/' if ns else ''}{n or '<unnamed>'}"
             for k, ns, n in node_identities(node)[:3]]
    text = ", ".join(found)
    return f" ({text if text.isprintable() and len(text) < 300 else show(text)})" \
        if found else ""


def _oneline(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).replace('in "<unicode string>", ', "at ")
    return text if len(text) <= 500 else text[:500] + "..."


def load_single(path: Path, limits: ParseLimits = DEFAULT_LIMITS) -> Any:
    """One document (a config or flows file) as JSON data; None when empty.
    Raises ParseError naming the file."""
    loaded = load_file(Path(path), limits, label=str(path))
    if loaded.errors:
        raise ParseError("; ".join(e for e in loaded.errors))
    docs = [d for d in loaded.documents if d is not None]
    if len(docs) > 1:
        raise ParseError(f"{path}: expected one document, found {len(docs)}")
    if not docs:
        return None
    if isinstance(docs[0], BadDocument):
        raise ParseError(f"{path}: {docs[0].reason}")
    try:
        return json_data(docs[0])
    except ParseError as exc:
        raise ParseError(f"{path}: {exc}") from None


# --- JSON data ---------------------------------------------------------------------------------

def json_data(value: Any) -> Any:
    """`value` as JSON data, a fresh tree, or ParseError naming the first
    path that JSON cannot hold. Runs at C speed for data that is fine."""
    try:
        copy = json.loads(json.dumps(value, allow_nan=False))
        if copy == value:
            return copy
    except (TypeError, ValueError, RecursionError):
        pass
    raise ParseError(explain(value) or "not JSON data")


def check_constructed(value: Any) -> Any:
    """`value` (from this module's YAML constructor or json.loads) if it is
    JSON data, else ParseError as json_data. Cheaper than json_data: such
    values can only go wrong through NotJSON markers (keys included) and
    non-finite numbers, which json.dumps alone refuses."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError, RecursionError):
        pass
    raise ParseError(explain(value) or "not JSON data")


def json_fingerprint(value: Any) -> str:
    """Canonical JSON text of `value` (sorted keys), after the same check as json_data."""
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":"))
        if json.loads(text) == value:
            return text
    except (TypeError, ValueError, RecursionError):
        pass
    raise ParseError(explain(value) or "not JSON data")


MAX_DEPTH = 200  # explain() stops descending here


def explain(value: Any, path: str = "", depth: int = 0, seen: set[int] | None = None
            ) -> str | None:
    """Why `value` is not JSON data (the first offending path), or None."""
    where = path or "(top level)"
    if value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):  # Python prints at most 4300 digits (about 14,000 bits)
        return None if value.bit_length() < 14000 else \
            f"{where}: an integer of {value.bit_length():,} bits is too large"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: {value} is not a JSON number"
    if isinstance(value, NotJSON):
        return f"{where}: {value.what} cannot be held in JSON"
    if depth >= MAX_DEPTH:
        return f"{where}: nested more than {MAX_DEPTH} levels deep"
    if not isinstance(value, (dict, list)):
        return f"{where}: a {type(value).__name__} value cannot be held in JSON"
    seen = set() if seen is None else seen
    if id(value) in seen:
        return f"{where}: refers to itself"
    seen.add(id(value))
    try:
        if isinstance(value, list):
            for i, item in enumerate(value):
                why = explain(item, f"{path}[{i}]", depth + 1, seen)
                if why:
                    return why
            return None
        for key, item in value.items():
            if isinstance(key, NotJSON):
                return f"{where}: {key.what}"
            if not isinstance(key, str):
                hint = "; quote it" if key is None or isinstance(key, (int, float)) else ""
                return (f"{where}: mapping key {_key_text(key)} ({_type_name(key)}) is not a "
                        f"string{hint}")
            why = explain(item, join_path(path, key), depth + 1, seen)
            if why:
                return why
        return None
    finally:
        seen.discard(id(value))


def join_path(path: str, key: str) -> str:
    """`path.key`, or `path[<repr>]` for a key that is not plain text."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{show(key)}]"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./-]{1,100}")


def _key_text(key: object) -> str:
    return "null" if key is None else show(key)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__
