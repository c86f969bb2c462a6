"""In-memory stand-ins for kernel-facing interfaces, shared by unit tests."""

from __future__ import annotations

import time

from pyagent.dataplanes.base import Description


class FakeDataplane:
    name = "fake"

    def __init__(self) -> None:
        self.broken = False
        self.syncs: list[tuple[dict, bool]] = []
        self.programmed: dict = {}

    def setup(self) -> None:
        pass

    def sync(self, states, full):
        if self.broken:
            raise RuntimeError("kernel says no")
        self.syncs.append((dict(states), full))
        if full:
            self.programmed = {}
        self.programmed.update({k: v for k, v in states.items() if v})
        for k in [k for k, v in states.items() if not v]:
            self.programmed.pop(k, None)
        return {k: None for k in states}

    def close(self) -> None:
        pass

    def describe(self) -> Description:
        return Description(self.name)

    def counters(self) -> None:
        return None


def wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


