"""One consistent read of a live API server, for `pyagent plan` and
`pyagent trace --kubeconfig`: a sink that keeps the first complete list of
each kind, shaped like a manifests directory's ManifestSet so that
core/planner.py computes the state from either. The read itself (the
agent's own KubeSource, then stop) is sources/kube_snapshot.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyagent.core.sink import KINDS, Kind


@dataclass
class Snapshot:
    """What load_state needs, as ManifestSet has it."""

    objects: dict[Kind, list[dict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    refused: dict[Kind, dict] = field(default_factory=lambda: {k: {} for k in KINDS})
    origins: dict[Kind, dict] = field(default_factory=lambda: {k: {} for k in KINDS})
    errors: list[str] = field(default_factory=list)


class CollectingSink:
    """An ObjectSink that keeps the first complete list of each kind."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def replace(self, kind: Kind, objects: list[dict], **_: Any) -> None:
        self.snap.objects[kind] = list(objects)

    def upsert(self, kind: Kind, obj: dict) -> None:  # watch events after the list: ignored
        pass

    def delete(self, kind: Kind, obj: dict) -> None:
        pass

    def report(self, problems: Sequence[str]) -> None:
        self.snap.errors.extend(problems)
