"""A large JSON `kind: List` file kept as its text, its items decoded one at a
time: once to check and name each (pyagent.core.manifest_dir), again when
it is handed on. The decoded tree of the whole file (about five times the
text: 87 MiB for a 17 MiB file of 100k endpoints) is then never alive at
once, only the text and a page of objects.

Anything but one JSON object whose `items` is an array (or a text json.loads
would refuse) is left to json.loads: `scan` returns False and the caller
parses the whole text as before, with json's own error messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_WS = " \t\n\r"


class ListText:
    """The items of a JSON List, as where each starts in its text."""

    __slots__ = ("text", "top", "starts", "_decode")

    def __init__(self, text: str) -> None:
        self.text = text
        self.top: dict[str, Any] = {}  # the other members (kind, metadata, ...)
        self.starts: list[int] = []
        # decodes again what scan checked: finite numbers only, no constants
        self._decode = json.JSONDecoder().raw_decode

    def __len__(self) -> int:
        return len(self.starts)

    def item(self, i: int) -> Any:
        return self._decode(self.text, self.starts[i])[0]


class Deferred:
    """One item of a ListText, decoded when `value()` is called; `kind` is
    set on it then when its typed list (ServiceList, ...) left it out."""

    __slots__ = ("items", "index", "kind")

    def __init__(self, items: ListText, index: int, kind: str | None) -> None:
        self.items, self.index, self.kind = items, index, kind

    def value(self) -> Any:
        obj = self.items.item(self.index)
        if self.kind is not None:
            obj["kind"] = self.kind
        return obj


def resolve(obj: Any) -> Any:
    """`obj` itself, or the decoded object a Deferred stands for."""
    return obj.value() if type(obj) is Deferred else obj


def _skip(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def scan(items: ListText, decoder: json.JSONDecoder, visit: Callable[[int, Any], None]
         ) -> bool:
    """Fill `items` (made with the text, no starts yet) from its text, handing
    each item to `visit(index, item)` as it is decoded; False (see module)
    when the text is not such a List. A syntax error anywhere gives False,
    after some items may have been visited: the caller drops what it made."""
    text, top, starts = items.text, items.top, items.starts
    decode = decoder.raw_decode
    seen_items = False
    try:
        i = _skip(text, 0)
        if text[i:i + 1] != "{":
            return False
        i = _skip(text, i + 1)
        while True:
            if text[i:i + 1] != '"':
                return False
            key, i = decode(text, i)
            i = _skip(text, i)
            if text[i:i + 1] != ":" or key in top or (key == "items" and seen_items):
                return False  # also a repeated key: json.loads keeps the last one
            i = _skip(text, i + 1)
            if key == "items" and text[i:i + 1] == "[":
                seen_items = True
                i = _items(text, i, decode, starts, visit)
                if i < 0:
                    return False
            else:
                top[key], i = decode(text, i)
            i = _skip(text, i)
            if text[i:i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i:i + 1] != "}":
                return False
            break
        return seen_items and _skip(text, i + 1) == len(text)
    except (ValueError, RecursionError):  # JSONDecodeError: json.loads will say where
        return False


def _items(text: str, i: int, decode: Callable[[str, int], tuple[Any, int]],
           starts: list[int], visit: Callable[[int, Any], None]) -> int:
    """Index after the items array at text[i] ("["), or -1."""
    i = _skip(text, i + 1)
    if text[i:i + 1] == "]":
        return i + 1
    while True:
        item, end = decode(text, i)
        starts.append(i)
        visit(len(starts) - 1, item)
        del item
        i = _skip(text, end)
        if text[i:i + 1] == ",":
            i = _skip(text, i + 1)
            continue
        return i + 1 if text[i:i + 1] == "]" else -1
