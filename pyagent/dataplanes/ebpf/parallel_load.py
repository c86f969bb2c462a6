"""A start's BPF loads, maps first. The compiles are the longest steps of an
agent start (about a second for the socket LB, two for the TC programs;
minutes under TCG), so the pinned maps are made first (tc.pin_maps: bpf()
calls here, no compile, a few milliseconds) unless every one is already
there, as on a restart. Then the agent can open and fill the maps while
both programs compile, each in its own child at the same time (two loads
creating the same pinned map at once would race; with the pins there they
only reuse them).

If the maps cannot be pinned ahead, the loads run one after the other, as
they always could, and the maps exist once the socket LB's load is done.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

from pyagent.dataplanes.ebpf import socket_lb, tc

log = logging.getLogger(__name__)

T = TypeVar("T", socket_lb.SockLB, tc.TcLB)


class _Load(Generic[T]):
    """One load in a thread of its own; `result()` waits for it."""

    def __init__(self, name: str, load: Callable[[], T], after: _Load | None = None) -> None:
        self._future: Future[T] = Future()

        def run() -> None:
            try:
                if after is not None:
                    after.result()  # the serial order: its maps are made by `after`
                self._future.set_result(load())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                self._future.set_exception(exc)
        threading.Thread(target=run, name=name, daemon=True).start()

    def result(self) -> T:
        return self._future.result()


class Loads:
    """The socket LB's load and (with tc_capacities) the TC programs' load,
    started by `start`. `pinned`: every map existed before either load
    began (open them now); else they exist once `socket_lb()` returns."""

    def __init__(self, pinned: bool, sock: _Load[socket_lb.SockLB],
                 tc_load: _Load[tc.TcLB] | None) -> None:
        self.pinned = pinned
        self._sock = sock
        self._tc = tc_load

    @property
    def has_tc(self) -> bool:
        return self._tc is not None

    def socket_lb(self) -> socket_lb.SockLB:
        """Waits for the socket LB's load; raises what it raised."""
        return self._sock.result()

    def tc(self) -> tc.TcLB:
        """Waits for the TC programs' load; raises what it raised."""
        assert self._tc is not None, "no TC load was started"
        return self._tc.result()

    def wait(self) -> None:
        """Both loads done; raises the first failure."""
        self.socket_lb()
        if self._tc is not None:
            self.tc()

    def discard(self, live: tuple[object, ...] = ()) -> None:
        """Wait for the loads and close the handles of those not `live` (a
        start that failed or stopped early; their pins stay, as after any
        load)."""
        for load in (self._sock, self._tc):
            if load is None:
                continue
            try:
                loaded = load.result()
            except Exception:  # noqa: BLE001 - the start's own error is the one to report
                log.debug("load of a start that did not finish", exc_info=True)
                continue
            if not any(loaded is obj for obj in live):
                loaded.close()


# The switch interval while the maps are pinned. Each of pinning's ~100 bpf()
# calls gives up the GIL and must take it back from the thread that parses
# the source meanwhile, which keeps it up to the interval (5 ms by default):
# pinning then took 0.5 s instead of 0.2, and both compiles started that much
# later. At 0.2 ms the socket LB's load was done 0.4-0.6 s sooner in
# bench_start (--tc too), the parse no slower.
PIN_SWITCH_INTERVAL = 0.0002


@contextlib.contextmanager
def _short_switch_interval() -> Iterator[None]:
    saved = sys.getswitchinterval()
    sys.setswitchinterval(min(saved, PIN_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def start(bpffs: str, capacities: socket_lb.Capacities,
          tc_capacities: tc.TcCapacities | None, xdp: bool = False,
          pods: bool = True) -> Loads:
    """Pin the maps (socket LB's, and the TC programs' with tc_capacities)
    unless they all are, then start the loads; returns at once. xdp, pods:
    tc.load_out_of_process's."""

    def sock_load() -> socket_lb.SockLB:
        return socket_lb.load_out_of_process(bpffs, capacities)

    def tc_load() -> tc.TcLB:
        assert tc_capacities is not None
        return tc.load_out_of_process(bpffs, capacities, tc_capacities, xdp=xdp, pods=pods)

    with_tc = tc_capacities is not None
    try:
        with _short_switch_interval():
            if not tc.pins_ready(bpffs, capacities, tc_capacities, tc_maps=with_tc):
                tc.pin_maps(bpffs, capacities, tc_capacities, tc_maps=with_tc)
        pinned = True
    except (RuntimeError, OSError) as exc:
        log.warning("pinning the maps ahead failed, so the programs load one after the "
                    "other and the maps are filled after that: %s", exc)
        pinned = False
    sock = _Load("sock-lb-load", sock_load)
    tc_l = _Load("tc-load", tc_load, after=None if pinned else sock) if with_tc else None
    return Loads(pinned, sock, tc_l)
