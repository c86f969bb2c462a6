"""A start's two BPF loads side by side. The TC programs' compile is the
longest step of an agent start (several seconds; minutes under TCG), so it
runs in its child while the socket LB's child compiles. Two loads creating
the same pinned map at once would race, so the pins are made first
(tc.pin_maps: a load of bpf_src/maps.c, a fraction of a second) unless every
one is already there, as on a restart."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from pyagent.dataplanes.ebpf import socket_lb, tc

log = logging.getLogger(__name__)

Loaded = Callable[[], tc.TcLB]  # waits for the load; raises what it raised


def start_tc_load(bpffs: str, capacities: socket_lb.Capacities,
                  tc_capacities: tc.TcCapacities, xdp: bool) -> Loaded:
    """Start loading the TC programs; the returned callable waits for them.
    If the maps cannot be pinned ahead, the load runs when it is called,
    after the socket LB's, as it always could."""

    def load() -> tc.TcLB:
        return tc.load_out_of_process(bpffs, capacities, tc_capacities, xdp=xdp)

    try:
        if not tc.pins_ready(bpffs, capacities, tc_capacities):
            tc.pin_maps(bpffs, capacities, tc_capacities)
    except (RuntimeError, OSError) as exc:
        log.warning("pinning the maps ahead failed, so the TC programs load after the "
                    "socket LB: %s", exc)
        return load
    result: Future[tc.TcLB] = Future()

    def run() -> None:
        try:
            result.set_result(load())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            result.set_exception(exc)
    threading.Thread(target=run, name="tc-load", daemon=True).start()
    return result.result


def discard(loaded: Loaded) -> None:
    """The start failed elsewhere: wait for the load and close what it made
    (its pins stay, as after any load)."""
    try:
        loaded().close()
    except Exception:  # noqa: BLE001 - the start's own error is the one to report
        log.debug("TC load of a failed start", exc_info=True)
