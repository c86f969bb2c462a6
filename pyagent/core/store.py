"""ServiceStore: the ObjectSink every source feeds, and the per-service state
every dataplane reads.

It keeps the current version of each object and drops no-op updates (same
resourceVersion or same content). An invalid update (not JSON data, a bad
field, or refused by the source) is reported by name and ignored: the
service keeps being served from its last good version. Nothing but the
project's ParseError is raised by the parsers; anything else they raise is a
bug, which is logged, counted in `internal_errors` and treated the same way. Slices
are indexed by (namespace, kubernetes.io/service-name), so the state of one
service costs O(size of that service) and is cached until its Service, its
slices or this node's zone change.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pyagent.core.config import NodeConfig
from pyagent.core.gc_pause import bulk_load
from pyagent.core.inputs import json_fingerprint
from pyagent.core.model import ServiceKey
from pyagent.core.parse import (
    ParsedNode,
    ParsedService,
    ParsedSlice,
    ParseError,
    object_name,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from pyagent.core.sink import KINDS, Kind
from pyagent.core.state import DesiredState, ServicePortState, compute_service_state

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]
ErrorKey = tuple[str, str, str]  # (kind, namespace, name)


class ServiceStore:
    def __init__(self, config: NodeConfig, *, log_invalid: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._log_invalid = log_invalid  # off when the caller reports `errors` itself
        # Per object only a fingerprint (resourceVersion, else a content hash):
        # raw objects would double the agent's memory at 100k endpoints.
        self._raw: dict[str, dict[ObjectKey, str]] = {k: {} for k in KINDS}
        self._node_raw: Mapping[str, Any] | None = None  # this node's object, for health
        self._services: dict[ServiceKey, ParsedService] = {}
        self._slices: dict[ObjectKey, ParsedSlice] = {}
        self._by_service: dict[ServiceKey, dict[str, ParsedSlice]] = {}
        self._node: ParsedNode | None = None  # the Node object named config.node_name
        self._cache: dict[ServiceKey, tuple[ServicePortState, ...]] = {}
        self._changed: set[ServiceKey] = set()
        self._taken: dict[ServiceKey, tuple[ServicePortState, ...]] = {}  # as last reported
        self._pending_services: set[ServiceKey] = set()
        self._pending_endpoints: set[ServiceKey] = set()
        self._synced: set[str] = set()
        self._listing: dict[str, set[ObjectKey]] = {}  # keys of a paged list so far
        self.errors: dict[ErrorKey, str] = {}
        self._origin: dict[ErrorKey, str] = {}  # where an object in error came from (a file)
        self.source_problems: list[str] = []  # what the source could not apply (see report)
        self.internal_errors = 0  # parser bugs: exceptions other than ParseError
        self.service_changes_total = 0
        self.endpoint_changes_total = 0
        # EndpointSlice last-change-trigger-times not yet taken (latency metric);
        # changes triggered before the store existed are not ours to time.
        self._trigger_times: list[float] = []
        self._setters: dict[str, Callable[[ObjectKey, Any], None]] = {
            "Service": self._set_service, "EndpointSlice": self._set_endpointslice,
            "Node": self._set_node}
        self._started = clock()

    # --- ObjectSink ------------------------------------------------------------

    # Sources may deliver a long list page by page (first=..., last=...).
    accepts_pages = True

    def replace(self, kind: Kind, objects: list[dict], *,
                refused: Mapping[ObjectKey, str] | None = None,
                origins: Mapping[ObjectKey, str] | None = None,
                first: bool = True, last: bool = True) -> None:
        """`refused`: objects the source has but could not use (reason);
        they keep their last good version like any invalid update.
        `origins`: where each object came from, for error messages.
        A list may come in pages: `first` starts one (forgetting any list
        left unfinished), each page is applied as it comes, and only the
        `last` one prunes what none of the pages held. The source's raw
        pages are then never all alive at once."""
        with bulk_load():  # what a list makes stays: no GC rescans (gc_pause)
            self._replace(kind, objects, refused, origins, first, last)

    def _replace(self, kind: Kind, objects: list[dict], refused: Mapping[ObjectKey, str] | None,
                 origins: Mapping[ObjectKey, str] | None, first: bool, last: bool) -> None:
        if first:
            self._listing[kind] = set()
        keep = self._listing.setdefault(kind, set())
        for obj in objects:
            key = self._apply(kind, obj, origins)
            if key is not None:
                keep.add(key)
        for key, reason in (refused or {}).items():
            self._invalid(kind, key, reason, origins.get(key) if origins else None)
            keep.add(key)
        if not last:
            return
        del self._listing[kind]
        for key in list(self._raw[kind].keys() - keep):
            self._remove(kind, key)
        for err in [e for e in self.errors if e[0] == kind and (e[1], e[2]) not in keep]:
            del self.errors[err]  # gone from the source, so no longer an error
            self._origin.pop(err, None)
        self._synced.add(kind)

    def upsert(self, kind: Kind, obj: dict) -> None:
        self._apply(kind, obj, None)

    def delete(self, kind: Kind, obj: dict) -> None:
        try:
            key = object_name(kind, obj)
        except ParseError as exc:
            log.warning("ignoring delete of an unnamed %s: %s", kind, exc)
            return
        self.errors.pop((kind, *key), None)
        self._origin.pop((kind, *key), None)
        if kind == "EndpointSlice" and key in self._raw[kind]:
            self._note_trigger(obj)
        self._remove(kind, key)

    def report(self, problems: Sequence[str]) -> None:
        """What the source's last read could not apply (files it serves from
        their last good content, documents it ignored); [] when clean."""
        self.source_problems = list(problems)

    # --- reading ---------------------------------------------------------------

    def synced(self) -> bool:
        return all(k in self._synced for k in KINDS)

    def take_changes(self) -> set[ServiceKey]:
        """Services whose state changed since the last call.

        Each is compared with the state this method last reported for it, so
        changes that end where they started, or that do not alter what gets
        proxied (an annotation, another node's hint), are dropped.
        """
        candidates, self._changed = self._changed, set()
        self._pending_services.clear()
        self._pending_endpoints.clear()
        changed = set()
        for key in candidates:
            state = self.state_for(key)
            if self._taken.get(key, ()) != state:
                changed.add(key)
                if state:
                    self._taken[key] = state
                else:
                    self._taken.pop(key, None)
        return changed

    def take_trigger_times(self) -> list[float]:
        """When the EndpointSlice changes applied since the last call were
        triggered (their last-change-trigger-time annotation, wall-clock
        seconds): kube-proxy's network programming latency starts there."""
        out, self._trigger_times = self._trigger_times, []
        return out

    def pending(self) -> tuple[int, int]:
        """(services, endpoint sets) changed and not yet taken."""
        return len(self._pending_services), len(self._pending_endpoints)

    def totals(self) -> tuple[int, int]:
        """Monotonic counts of accepted Service and EndpointSlice changes."""
        return self.service_changes_total, self.endpoint_changes_total

    def service_keys(self) -> list[ServiceKey]:
        return sorted(self._services)

    def state_for(self, key: ServiceKey) -> tuple[ServicePortState, ...]:
        """The state of one service; empty if gone, headless, ExternalName or invalid."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        svc = self._services.get(key)
        if svc is None or not svc.ports:
            return ()
        state = compute_service_state(svc.ports, self._by_service.get(key, {}).values(),
                                      self.config, self.zone)
        self._cache[key] = state
        return state

    def warm(self) -> None:
        """Compute (and cache) every Service's state now, e.g. while the
        dataplane is still being set up, so that the first sync finds it."""
        for key in self._services:
            self.state_for(key)

    def full_state(self) -> DesiredState:
        ports = [s for key in sorted(self._services) for s in self.state_for(key)]
        ports.sort(key=lambda s: s.key)
        return DesiredState(tuple(ports), tuple(self.error_messages()))

    def error_messages(self) -> list[str]:
        out = []
        for key, msg in sorted(self.errors.items()):
            kind, ns, name = key
            origin = self._origin.get(key)
            out.append(f"{origin + ': ' if origin else ''}{kind} {ns + '/' if ns else ''}"
                       f"{name}: {msg}")
        return out

    @property
    def zone(self) -> str:
        return self._node.zone if self._node is not None else self.config.zone

    def node(self) -> Mapping[str, Any] | None:
        """This node's Node object as last received (taints, deletion, labels)."""
        return self._node_raw

    def node_addresses(self) -> tuple[str, ...]:
        """InternalIP/ExternalIP addresses of this node's Node object, if known."""
        return self._node.addresses if self._node is not None else ()

    # --- internals ---------------------------------------------------------------

    def _apply(self, kind: Kind, obj: Mapping[str, Any],
               origins: Mapping[ObjectKey, str] | None) -> ObjectKey | None:
        try:
            key = object_name(kind, obj)
        except ParseError as exc:
            log.warning("ignoring a %s without a usable name: %s", kind, exc)
            return None
        origin = origins.get(key) if origins else None
        old = self._raw[kind].get(key)
        try:
            fingerprint = _fingerprint(obj)  # also checks that it is JSON data
            if old is not None and old == fingerprint:
                self._clear(kind, key)  # back to the good version
                return key
            if kind == "EndpointSlice":  # the bulk: 10 or more for each Service
                parsed: Any = parse_endpoint_slice(obj, self.config.node_name, key)
            elif kind == "Service":
                parsed = parse_service(obj, honour_ip_mode=self.config.honour_lb_ip_mode,
                                       key=key)
            else:
                parsed = parse_node(obj, key)
        except ParseError as exc:
            self._invalid(kind, key, str(exc), origin)
            return key
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the source
            self.internal_errors += 1
            log.exception("%s %s/%s: internal error while parsing", kind, *key)
            self._invalid(kind, key, f"internal error: {type(exc).__name__}: {exc}", origin)
            return key
        self._clear(kind, key)
        self._raw[kind][key] = fingerprint
        if kind == "Node" and key[1] == self.config.node_name:
            self._node_raw = obj
        self._setters[kind](key, parsed)
        if kind == "EndpointSlice":
            self._note_trigger(obj)
        return key

    def _note_trigger(self, obj: Mapping[str, Any]) -> None:
        stamp = trigger_time(obj)
        if stamp is not None and stamp > self._started:
            self._trigger_times.append(stamp)

    def _invalid(self, kind: Kind, key: ObjectKey, msg: str, origin: str | None) -> None:
        ekey = (kind, *key)
        if self._log_invalid and self.errors.get(ekey) != msg:
            what = "keeping the last good version" if key in self._raw[kind] else "ignored"
            log.warning("%s%s %s/%s is invalid (%s): %s", f"{origin}: " if origin else "",
                        kind, *key, what, msg)
        self.errors[ekey] = msg
        if origin:
            self._origin[ekey] = origin
        else:
            self._origin.pop(ekey, None)

    def _clear(self, kind: Kind, key: ObjectKey) -> None:
        if self.errors:  # _origin's keys are among them
            self.errors.pop((kind, *key), None)
            self._origin.pop((kind, *key), None)

    def _remove(self, kind: Kind, key: ObjectKey) -> None:
        if self._raw[kind].pop(key, None) is None:
            return
        self._setters[kind](key, None)

    def _set_service(self, key: ObjectKey, parsed: ParsedService | None) -> None:
        if parsed is None:
            self._services.pop(key, None)
        else:
            self._services[key] = parsed
        self._touch(key)
        self._pending_services.add(key)
        self.service_changes_total += 1

    def _set_endpointslice(self, key: ObjectKey, parsed: ParsedSlice | None) -> None:
        old = self._slices.pop(key, None)
        if old is not None:
            group = self._by_service.get(old.service_key, {})
            group.pop(old.name, None)
            if not group:
                self._by_service.pop(old.service_key, None)
            self._touch_endpoints(old.service_key)
        if parsed is not None:
            self._slices[key] = parsed
            self._by_service.setdefault(parsed.service_key, {})[parsed.name] = parsed
            self._touch_endpoints(parsed.service_key)
        self.endpoint_changes_total += 1

    def _set_node(self, key: ObjectKey, parsed: ParsedNode | None) -> None:
        if key[1] != self.config.node_name:
            return
        if parsed is None:
            self._node_raw = None
        before = self.zone
        self._node = parsed
        if self.zone != before:  # topology hints now select differently everywhere
            self._cache.clear()
            self._changed.update(self._services)

    def _touch(self, key: ServiceKey) -> None:
        self._cache.pop(key, None)
        self._changed.add(key)

    def _touch_endpoints(self, key: ServiceKey) -> None:
        self._touch(key)
        self._pending_endpoints.add(key)


TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


def trigger_time(obj: Mapping[str, Any]) -> float | None:
    """The EndpointSlice's last-change-trigger-time (RFC 3339, set by the
    endpoint controllers) as wall-clock seconds; None when absent or invalid
    (as kube-proxy, the change is then not timed)."""
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, Mapping) else None
    value = notes.get(TRIGGER_TIME_ANNOTATION) if isinstance(notes, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None


def _fingerprint(obj: Mapping[str, Any]) -> str:
    """What tells two versions of an object apart: the API server's
    resourceVersion (its objects are decoded JSON), or a hash of the content,
    which raises ParseError for what is not JSON data (a key that is not a
    string, a date, a set, NaN...)."""
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    if isinstance(rv, str) and rv:
        return f"rv:{rv}"
    blob = json_fingerprint(obj).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()
