"""What keeping N Services programmed costs the process that holds the
dataplane (for tests.bench.report): one-change latency, CPU seconds per
1,000 endpoint changes, and its memory."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Sequence
from pathlib import Path


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's
    default), so a p99 of 50 samples lies between the two largest."""
    s = sorted(xs)
    if not s:
        raise ValueError("no samples")
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def cpu_seconds() -> float:
    """User + system time of this process (all its threads) and of its
    waited-for children (iptables-restore, nft...)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def change_cost(dp, key: tuple, sets: Sequence[tuple], changes: int, seconds: float) -> dict:
    """Hand the dataplane `key`'s endpoints alternately from `sets` (each
    differs from the one before, so every sync is a real change), up to
    `changes` times or until `seconds` have passed; latency of each partial
    sync and the CPU they took. No other child may run meanwhile: the
    children's CPU counts once they are waited for."""
    lat: list[float] = []
    errors = 0
    cpu0, deadline = cpu_seconds(), time.perf_counter() + seconds
    for i in range(changes):
        t = time.perf_counter()
        status = dp.sync({key: sets[i % len(sets)]}, full=False)
        lat.append(time.perf_counter() - t)
        errors += sum(1 for err in status.values() if err)
        if time.perf_counter() > deadline:
            break
    cpu = cpu_seconds() - cpu0
    return {"changes": len(lat), "change_errors": errors,
            "change_p50_ms": percentile(lat, 50) * 1e3, "change_p99_ms": percentile(lat, 99) * 1e3,
            "cpu_s_per_1k": cpu / len(lat) * 1000}


def memory() -> dict:
    """VmRSS (now) and VmHWM (peak so far) of this process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmRSS", "VmHWM")))
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024}
