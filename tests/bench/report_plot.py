"""The PNG plots of tests.bench.report (matplotlib, the `bench` extra). Each
figure carries the command and the machine it came from in a footer, and
names the points that did not run."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

MODES = ("iptables", "ipvs", "nftables", "userspace", "ebpf")
COLORS = {m: f"C{i}" for i, m in enumerate(MODES)}  # a mode keeps its colour in every plot


def _series(ok: list[dict], mode: str, key: str) -> tuple[list[int], list[float]]:
    rs = sorted((r for r in ok if r["mode"] == mode and r.get(key) is not None),
                key=lambda r: r["services"])
    return [r["services"] for r in rs], [r[key] for r in rs]


def footer(meta: dict, results: list[dict]) -> str:
    lines = [f"{meta['command']}   |   {meta['date']}, Linux {meta['kernel']}, "
             f"{meta['cpus']} CPUs"]
    return "\n".join([*lines, *_not_run(results)])


def footer_emulated(meta: dict) -> str:
    """The footer of a figure of rows measured in a VM (tests/bench/report_vm.py's
    ipvs.json): the command, the VM (emulation, kernel, vCPUs, memory), the
    host it ran on, the report command inside, and the points that did not run."""
    vm, host = meta["vm"], meta["host"]
    lines = [f"{meta['command']}   |   {meta['date']}, qemu {vm['accel'].upper()} (emulated, "
             f"no KVM), Linux {vm['kernel']}, {vm['cpus']} vCPUs, {vm['memory_mib']} MiB; "
             f"host Linux {host['kernel']}, {host['cpus']} CPUs",
             f"in the VM: {meta['vm_command']}"]
    if meta.get("vm_note"):
        lines.append(f"VM: {meta['vm_note']}")
    return "\n".join([*lines, *_not_run(meta["results"])])


def _not_run(results: list[dict]) -> list[str]:
    lines = []
    skipped = [f"{r['mode']} {r['services']:,}: {r['skipped'].split(' (')[0]}"
               for r in results if r.get("skipped")]
    failed = {r["mode"]: r["error"].split(" (")[0][:70] for r in results if r.get("error")}
    if skipped:
        lines.append("not run: " + "; ".join(skipped))
    if failed:
        lines.append("failed: " + "; ".join(f"{m}: {e}" for m, e in failed.items()))
    return lines


def _finish(fig, note: str, path: Path) -> Path:
    # ~17 monospace characters of 6.5 pt per inch of figure
    width = int(fig.get_figwidth() * 17)
    note = "\n".join(w for line in note.splitlines() for w in textwrap.wrap(line, width))
    lines = note.count("\n") + 1
    fig.text(0.01, 0.01, note, fontsize=6.5, color="#444444", va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.035 * lines + 0.01, 1, 1))
    fig.savefig(path, dpi=90)
    return path


def _plain(v: float, _pos: object = None) -> str:
    return f"{v:g}"


def _log_x(ax, ylabel: str, title: str, ns: list[int], log_y: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter, LogFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.xaxis.set_minor_locator(NullLocator())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        # plain numbers; matplotlib picks which minor ticks to label by range
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("Services loaded")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", linewidth=0.3)
    _headroom(ax, log_y)
    ax.legend(fontsize=7, ncol=2, loc="upper left")


def _headroom(ax, log_y: bool) -> None:
    """Room above the data for the legend (about a third of the axes), so
    it never hides a point; linear axes start at 0."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    if log_y:
        span = max(math.log10(hi / lo), 0.5)
        ax.set_ylim(lo / 10 ** (0.05 * span), hi * 10 ** (0.5 * span))
    else:
        ax.set_ylim(0, hi * 1.5)


def plot(results: list[dict], meta: dict, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed: no plots", file=sys.stderr)
        return []
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)]
    ns = sorted({r["services"] for r in ok})
    note = footer(meta, results)
    files = []

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.8))
    for row, (cost, collateral, client) in enumerate((
            ("cost", "collateral", "Python client: connect, read, close"),
            ("wrkc_cost", "wrkc_collateral", "wrk, a new connection per request"))):
        for m in modes:
            axes[row][0].plot(*_series(ok, m, cost), marker="o", color=COLORS[m], label=m)
            axes[row][1].plot(*_series(ok, m, collateral), marker="o", color=COLORS[m],
                              label=m)
        for ax, title in ((axes[row][0], "new connections/s through a ClusterIP, relative to"
                                         f" direct\nwithout rules; {client}"),
                          (axes[row][1], "direct connections/s with the rules loaded, "
                                         f"relative to\nwithout rules; {client}")):
            ax.axhline(1.0, color="grey", linewidth=0.8)
            _log_x(ax, "relative rate", title, ns)
    files.append(_finish(fig, note, out / "connect.png"))

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for m in modes:
        ax.plot(*_series(ok, m, "full_sync_s"), marker="o", color=COLORS[m], label=f"{m} full")
        ax.plot(*_series(ok, m, "partial_sync_s"), marker="x", linestyle="--",
                color=COLORS[m], label=f"{m} one Service")
    _log_x(ax, "seconds", "sync time: full (first) and one changed Service", ns, log_y=True)
    files.append(_finish(fig, note, out / "sync.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, q in zip(axes, ("p50", "p99"), strict=True):
        for m in modes:
            ax.plot(*_series(ok, m, f"wrk_vip_{q}_us"), marker="o", color=COLORS[m],
                    label=f"{m} VIP")
            ax.plot(*_series(ok, m, f"wrk_direct_{q}_us"), marker="x", linestyle="--",
                    color=COLORS[m], label=f"{m} direct")
        _log_x(ax, "microseconds", f"HTTP request latency {q} (wrk, keep-alive, "
                                   f"nginx in the pod)\nthrough the ClusterIP vs direct",
               ns, log_y=True)
    files.append(_finish(fig, note, out / "latency.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for m in modes:
        axes[0].plot(*_series(ok, m, "change_p99_ms"), marker="o", color=COLORS[m],
                     label=f"{m} p99")
        axes[0].plot(*_series(ok, m, "change_p50_ms"), marker="x", linestyle="--",
                     color=COLORS[m], label=f"{m} p50")
        axes[1].plot(*_series(ok, m, "cpu_s_per_1k"), marker="o", color=COLORS[m], label=m)
    _log_x(axes[0], "milliseconds", "one changed Service's endpoints applied\n"
                                    "(partial sync latency)", ns, log_y=True)
    _log_x(axes[1], "CPU seconds", "CPU per 1,000 endpoint changes\n"
                                   "(user+sys, process and its children)", ns, log_y=True)
    files.append(_finish(fig, note, out / "cost.png"))

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for m in modes:
        ax.plot(*_series(ok, m, "rss_mb"), marker="o", color=COLORS[m], label=f"{m} RSS")
        ax.plot(*_series(ok, m, "hwm_mb"), marker="x", linestyle="--", color=COLORS[m],
                label=f"{m} peak (HWM)")
    _log_x(ax, "MiB", "memory of the process holding the dataplane\n"
                      "after the full sync (not a whole agent)", ns)
    files.append(_finish(fig, note, out / "rss.png"))
    plt.close("all")
    return files


def plot_emulated(meta: dict, out: Path) -> list[Path]:
    """OUT/ipvs.png: the rows of tests/bench/report_vm.py's ipvs.json (one
    mode, measured in a qemu VM) in one figure of their own, titled with the
    emulation and kernel: TCG's absolute times are those of an emulated CPU,
    so they never share an axis with the host's modes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed: no plots", file=sys.stderr)
        return []
    results = meta["results"]
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    ns = sorted({r["services"] for r in ok})
    if not ns:
        print("report: no emulated point ran: no ipvs.png", file=sys.stderr)
        return []
    mode = ok[0]["mode"]
    color = COLORS.get(mode, "C0")
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.2))
    fig.suptitle(f"{mode} mode, {meta['label']}: times are an emulated CPU's, not "
                 "comparable with the host's plots", fontsize=11)
    ax = axes[0][0]
    for key, marker, style, name in (
            ("cost", "o", "-", "Python client: VIP vs direct without rules"),
            ("collateral", "x", "--", "Python client: direct with vs without rules"),
            ("wrkc_cost", "s", ":", "wrk new conn.: VIP vs direct without rules"),
            ("wrkc_collateral", "^", "-.", "wrk new conn.: direct with vs without rules")):
        ax.plot(*_series(ok, mode, key), marker=marker, linestyle=style, color=color, label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    _log_x(ax, "relative rate", "new connections/s, relative\n(1.0: the rules cost nothing)", ns)
    ax.legend(fontsize=6.5, ncol=1, loc="upper left")
    ax = axes[0][1]
    for key, marker, style, name in (("full_sync_s", "o", "-", "full (first)"),
                                     ("resync_s", "s", ":", "resync"),
                                     ("partial_sync_s", "x", "--", "one Service")):
        ax.plot(*_series(ok, mode, key), marker=marker, linestyle=style, color=color, label=name)
    _log_x(ax, "seconds", "sync time", ns, log_y=True)
    ax = axes[0][2]
    for q, marker in (("p50", "o"), ("p99", "s")):
        ax.plot(*_series(ok, mode, f"wrk_vip_{q}_us"), marker=marker, color=color,
                label=f"{q} VIP")
        ax.plot(*_series(ok, mode, f"wrk_direct_{q}_us"), marker="x", linestyle="--",
                color="grey" if q == "p50" else "black", label=f"{q} direct")
    _log_x(ax, "microseconds", "HTTP request latency (wrk, keep-alive,\nnginx in the pod)",
           ns, log_y=True)
    ax = axes[1][0]
    ax.plot(*_series(ok, mode, "change_p99_ms"), marker="o", color=color, label="p99")
    ax.plot(*_series(ok, mode, "change_p50_ms"), marker="x", linestyle="--", color=color,
            label="p50")
    _log_x(ax, "milliseconds", "one changed Service's endpoints applied\n"
                               "(partial sync latency)", ns, log_y=True)
    ax = axes[1][1]
    ax.plot(*_series(ok, mode, "cpu_s_per_1k"), marker="o", color=color, label=mode)
    _log_x(ax, "CPU seconds", "CPU per 1,000 endpoint changes\n"
                              "(user+sys, process and its children)", ns, log_y=True)
    ax = axes[1][2]
    ax.plot(*_series(ok, mode, "rss_mb"), marker="o", color=color, label="RSS")
    ax.plot(*_series(ok, mode, "hwm_mb"), marker="x", linestyle="--", color=color,
            label="peak (HWM)")
    _log_x(ax, "MiB", "memory of the process holding the dataplane\n"
                      "after the full sync", ns)
    path = _finish(fig, footer_emulated(meta), out / f"{mode}.png")
    plt.close("all")
    return [path]
