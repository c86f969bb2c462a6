"""Which points of tests.bench.report to run: a point whose first full sync,
extrapolated from the smaller N of the same mode, would exceed the budget is
skipped with the estimate, as is one the mode cannot hold on this machine.
Pure apart from reading this machine's limits (limits())."""

from __future__ import annotations

import math
import resource

# The userspace proxy binds one listening socket (one fd, one local port)
# per Service port: a limit of the mode, not of this report.
LISTENERS_PER_SERVICE = {"userspace": 1}


def estimate(measured: list[tuple[int, float]], n: int) -> tuple[float, float] | None:
    """(seconds, growth exponent) of the first full sync at `n` from the
    (N, seconds) points measured below it: t(n) = t(N2) * (n / N2) ** k,
    k measured between the two largest points but never below 1 (small N
    are mostly fixed cost; sub-linear growth would under-estimate), linear
    with one point. None without any smaller point."""
    pts = sorted(p for p in measured if p[0] < n and p[1] > 0)
    if not pts:
        return None
    n2, t2 = pts[-1]
    k = 1.0
    if len(pts) > 1:
        n1, t1 = pts[-2]
        k = max(1.0, math.log(t2 / t1) / math.log(n2 / n1))
    return t2 * (n / n2) ** k, k


def limits(port_range: str) -> dict[str, int]:
    """The bounds on listening sockets: the fd hard limit (the inner process
    inherits it) and the size of `port_range` (ip_local_port_range, read in a
    lab namespace: a fresh netns has the kernel default, not the host's)."""
    lo, hi = (int(x) for x in port_range.split())
    return {"fds": resource.getrlimit(resource.RLIMIT_NOFILE)[1], "ports": hi - lo + 1}


def skip_reason(mode: str, n: int, services: int, measured: list[tuple[int, float]],
                budget: float, machine: dict[str, int], margin: int = 500) -> str | None:
    """Why the point (mode, n) is not run, or None. `services` counts the
    report's own extra Services; `margin` fds are left for everything else."""
    per = LISTENERS_PER_SERVICE.get(mode, 0)
    if per:
        need = per * services
        room = min(machine["fds"] - margin, machine["ports"])
        if need > room:
            return (f"needs {need:,} listening sockets (one per Service port); this machine "
                    f"allows {room:,} (fd hard limit {machine['fds']:,} - {margin}, "
                    f"{machine['ports']:,} local ports)")
    est = estimate(measured, n)
    if est and est[0] > budget:
        basis = ", ".join(f"{pn:,}: {pt:.2f} s" for pn, pt in sorted(measured)[-2:])
        return (f"first full sync estimated at {est[0]:.0f} s > budget {budget:g} s "
                f"(from {basis}; growth N^{est[1]:.2f})")
    return None
