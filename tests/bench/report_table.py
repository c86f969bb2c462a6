"""The table tests.bench.report prints: one row per mode and N; a point that
did not run says why instead (error, skipped), and a missing measurement is
a dash."""

from __future__ import annotations

import textwrap

# (header, key, format); the header's width is the column's width
COLUMNS = (
    ("direct us", "direct_us", "{:.1f}"), ("VIP us", "vip_us", "{:.1f}"),
    ("ratio", "ratio", "{:.2f}"), ("cost", "cost", "{:.2f}"), ("collat.", "collateral", "{:.2f}"),
    ("full s", "full_sync_s", "{:.3f}"), ("resync s", "resync_s", "{:.3f}"),
    ("partial s", "partial_sync_s", "{:.4f}"),
    ("new cost", "wrkc_cost", "{:.2f}"), ("new coll.", "wrkc_collateral", "{:.2f}"),
    ("p50 VIP", "wrk_vip_p50_us", "{:.0f}"), ("p50 dir", "wrk_direct_p50_us", "{:.0f}"),
    ("p99 VIP", "wrk_vip_p99_us", "{:.0f}"), ("p99 dir", "wrk_direct_p99_us", "{:.0f}"),
    ("chg n", "changes", "{:d}"), ("chg p50 ms", "change_p50_ms", "{:.2f}"),
    ("chg p99 ms", "change_p99_ms", "{:.2f}"),
    ("CPU s/1k", "cpu_s_per_1k", "{:.2f}"), ("RSS MB", "rss_mb", "{:.0f}"),
    ("HWM MB", "hwm_mb", "{:.0f}"),
)
LEGEND = ("us: microseconds; direct/VIP us: one new connection; ratio = direct/VIP, "
          "cost = direct before any rule/VIP, collat. = direct before/after the rules "
          "(1.0: nothing); new cost / new coll.: the same two with wrk opening a "
          "connection per request (C client, nginx in the pod); p50/p99 VIP/dir: wrk "
          "request latency (us, keep-alive) through "
          "the VIP / to the pod; chg: one changed Service applied (partial sync; n "
          "changes, fewer once they took a quarter of --budget); "
          "CPU s/1k: CPU seconds per 1,000 changes (process + children); RSS/HWM: the "
          "process holding the dataplane after the full sync")


def cell(r: dict, key: str, fmt: str, width: int) -> str:
    v = r.get(key)
    return f"{fmt.format(v) if isinstance(v, int | float) else '-':>{width}}"


def table(results: list[dict]) -> str:
    rows = [" ".join([f"{'mode':10} {'services':>8}", *(h for h, _, _ in COLUMNS)])]
    notes = []
    for r in results:
        head = f"{r['mode']:10} {r['services']:8}"
        why = f"skipped: {r['skipped']}" if r.get("skipped") else r.get("error")
        if why:
            rows.append(f"{head}  {why}")
            continue
        rows.append(" ".join([head, *(cell(r, k, f, len(h)) for h, k, f in COLUMNS)]))
        if r.get("wrk_unavailable"):  # the same reason for every point: said once
            notes.append(f"wrk: {r['wrk_unavailable']}")
        if r.get("sync_errors"):
            notes.append(f"{r['mode']} {r['services']}: the full sync refused "
                         f"{r['sync_errors']} Services")
        if r.get("wrk_error"):
            notes.append(f"{r['mode']} {r['services']}: wrk: {r['wrk_error']}")
    return "\n".join([*rows, *dict.fromkeys(notes), *textwrap.wrap(LEGEND, 100)])
