"""The one interface every source feeds: plain dicts of v1 Service,
discovery.k8s.io/v1 EndpointSlice and v1 Node, as the API server serves them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

Kind = Literal["Service", "EndpointSlice", "Node"]
KINDS: tuple[Kind, ...] = ("Service", "EndpointSlice", "Node")


class ObjectSink(Protocol):
    """Receives the source's view of the cluster.

    `replace` carries a complete list of one kind (initial list, relist after
    410 Gone, or a re-read manifests directory): objects absent from it are
    gone, except those in `refused` ((namespace, name) -> reason: the source
    has them but cannot use them, so they keep their last good version);
    `origins` names where each object came from (a file), for messages.
    `upsert`/`delete` carry single watch events. A source calls `replace`
    for every kind before the sink may prune anything. `report` carries what
    the source's last read could not apply at all ([] when clean).

    A sink with a true `accepts_pages` attribute also takes a list in pages:
    `replace(kind, page, first=bool, last=bool)`; it prunes at the last
    page only, and a new first page abandons an unfinished list.
    """

    def replace(self, kind: Kind, objects: list[dict], *,
                refused: Mapping[tuple[str, str], str] | None = None,
                origins: Mapping[tuple[str, str], str] | None = None) -> None: ...

    def report(self, problems: Sequence[str]) -> None: ...

    def upsert(self, kind: Kind, obj: dict) -> None: ...

    def delete(self, kind: Kind, obj: dict) -> None: ...
