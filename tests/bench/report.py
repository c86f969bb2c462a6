"""The five-mode report: what one new connection and one HTTP request cost in
each dataplane mode with N Services loaded, and what syncing and keeping them
costs, with plots.

For every mode (iptables, ipvs, nftables, userspace, ebpf; one that cannot
run here is reported with why) and every N, in a fresh namespace lab (own
node namespace, cgroup and bpffs; nothing touches the host's), the dataplane
runs in an inner process in the lab's node namespace and cgroup:

  - connection cost: connect(), read the pod's one-line answer, close();
    the target Services sort after all others (namespace zz-bench), so
    modes that match Services one by one show their worst case;
    through a ClusterIP and directly to the same pod, in alternating rounds
    (medians); ratio = VIP / direct connections per second in those rounds,
    cost = VIP with N Services loaded / direct before any rule existed (what
    the mode costs a connection; 1.0: nothing);
  - collateral: direct connections with the N Services loaded against
    direct connections of the same lab before any rule existed;
  - request latency: wrk --latency (keep-alive: the per-packet path) against
    nginx in the pod, through a second ClusterIP and directly, p50 and p99
    (medians over --wrk-rounds alternating runs; needs `apt-get install -y
    wrk nginx-light`, else that part is reported unavailable);
  - full sync, periodic resync and a one-Service partial sync (seconds);
  - one change: a Service's endpoints switched between two sets up to
    --changes times (partial syncs), p50/p99 latency and the CPU seconds
    (user+sys of the inner process and its children, e.g. iptables-restore)
    per 1,000 changes;
  - memory: VmRSS and VmHWM of the inner process after the full sync (the
    process holding the dataplane with N Services, not a whole agent:
    tests/bench/bench_start.py measures that).

A point whose first full sync, extrapolated from the smaller N of its mode,
exceeds --budget seconds, or that the mode cannot hold here (userspace: a
listening socket per Service port), is skipped with the estimate and why.

    .venv/bin/python -m tests.bench.report [--services 10 1000 10000 50000]
        [--modes ...] [--connects 400] [--rounds 5] [--budget 120] [--out docs/bench]
        [--no-plot] [--replot]

Writes OUT/report.json (after every point, marked "incomplete" until the
last: a run cut short keeps what it measured) and, with matplotlib (the
`bench` extra: `.venv/bin/pip install matplotlib`; not with --no-plot),
OUT/connect.png, sync.png, latency.png, cost.png and rss.png. Reports
numbers; asserts nothing. IPVS, absent from this host's kernel, runs in a
qemu VM instead: tests/bench/report_vm.py (OUT/ipvs.json, ipvs.png; --replot
redraws that too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.state import ServicePortState
from tests.bench import report_budget, report_cost, report_wrk
from tests.bench.bench_modes import NODE_IP, states, sync_times, with_dataplane
from tests.bench.report_plot import MODES, plot
from tests.bench.report_table import table

VIP, WEB_VIP = "10.95.0.10", "10.95.0.11"  # outside the addresses bench_modes.states gives
EXTRA = 2  # Services the report adds to the N: the two above
REPO = Path(__file__).resolve().parents[2]
CONNECT = """
import socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
for _ in range(n):
    s = socket.create_connection((dst, port), timeout=5)
    s.recv(512)
    s.close()
print((time.perf_counter() - t) / n)
"""


def per_connection(dst: str, port: int, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", CONNECT, dst, str(port), str(n)],
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"connections to {dst}:{port}: {out.stderr.strip()[-200:]}")
    return float(out.stdout)


def target(name: str, vip: str, pod_ip: str, port: int) -> tuple[ServicePortState, ...]:
    sp = ServicePort("zz-bench", name, "http", "TCP", 80, 4, vip)
    ep = (Endpoint(pod_ip, port, node_name="node-1", is_local=True),)
    return (ServicePortState(sp, ep, None, ep, True),)


def _wrk_rounds(pod_ip: str, opts: dict, kinds: tuple[str, ...], close: bool
                ) -> dict[str, list[dict]]:
    """wrk runs alternating over `kinds` ("direct", "vip", "baseline": direct
    on a port of its own), --wrk-rounds of each; `close`: a new connection
    per request, after a warm-up run of each (the first run of a fresh lab
    was 20% slower)."""
    hosts = {"direct": f"{pod_ip}:{report_wrk.NGINX_PORT}", "vip": f"{WEB_VIP}:80",
             "baseline": f"{pod_ip}:{report_wrk.BASELINE_PORT}"}

    def run(kind: str, seconds: float) -> dict:
        return report_wrk.run(f"http://{hosts[kind]}/", seconds, opts["wrk_threads"],
                              opts["wrk_connections"], close=close)

    if close:
        for kind in kinds:
            run(kind, 1)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(opts["wrk_rounds"]):
        for kind in kinds:
            runs[kind].append(run(kind, opts["wrk_seconds"]))
    return runs


def wrk_latency(res: dict, pod_ip: str, opts: dict) -> None:
    """Keep-alive wrk to the pod and through WEB_VIP; medians into res."""
    for kind, rs in _wrk_rounds(pod_ip, opts, ("direct", "vip"), close=False).items():
        for key in ("p50_us", "p99_us", "rps"):
            res[f"wrk_{kind}_{key}"] = statistics.median(r[key] for r in rs)
        res[f"wrk_{kind}_errors"] = sum(r["errors"] for r in rs)


def wrk_new_connections(res: dict, pod_ip: str, opts: dict, kinds: tuple[str, ...]) -> None:
    """New connections/s by wrk (`Connection: close`) over `kinds`, medians
    into res[f"wrkc_{kind}_rps"]."""
    for kind, rs in _wrk_rounds(pod_ip, opts, kinds, close=True).items():
        res[f"wrkc_{kind}_rps"] = statistics.median(r["rps"] for r in rs)


def inner(opts: dict) -> dict:
    """Runs inside the lab's node namespace (and, for the socket hooks, its
    cgroup, which every child inherits: wrk, nginx, iptables-restore)."""
    mode, n, pod_ip = opts["mode"], opts["services"], opts["pod_ip"]
    Path(opts["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    config = NodeConfig(node_name="node-1", node_ips=(NODE_IP,), cluster_cidrs=("10.244.0.0/16",),
                        mode=mode, bpffs=opts["bpffs"], cgroup=opts["cgroup"])
    all_states = states(n)
    all_states[("zz-bench", "target")] = target("target", VIP, pod_ip, 8080)
    all_states[("zz-bench", "web")] = target("web", WEB_VIP, pod_ip,
                                             report_wrk.VIP_BACKEND_PORT)
    # Locally sent packets are routed before the nat OUTPUT hook rewrites
    # them: the VIPs need a route (a node's default route), here the lab's own.
    subprocess.run(["ip", "route", "replace", "10.95.0.0/24", "dev", "br0"], check=True)
    res: dict = {"mode": mode, "services": n}
    per_connection(pod_ip, 8080, opts["connects"] // 4)  # warm up
    res["direct_empty_us"] = statistics.median(
        per_connection(pod_ip, 8080, opts["connects"]) for _ in range(opts["rounds"])) * 1e6
    nginx = None
    if why := report_wrk.missing():
        res["wrk_unavailable"] = why
    else:
        try:
            nginx = report_wrk.start_nginx(opts["pod_ns"], pod_ip, Path(opts["workdir"]))
            wrk_new_connections(res, pod_ip, opts, ("baseline",))  # no rules yet
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            res["wrk_error"] = str(exc)[:300]

    def body(dp) -> None:
        dp.setup()
        res.update(sync_times(dp, all_states))
        # what the agent does after a large sync (gc.freeze, malloc_trim), so
        # RSS and the change latencies are the agent's
        from pyagent.node.agent import release_free_memory

        release_free_memory()
        res.update(report_cost.memory())
        per_connection(VIP, 80, opts["connects"] // 4)
        direct, vip = [], []
        for _ in range(opts["rounds"]):
            direct.append(per_connection(pod_ip, 8080, opts["connects"]))
            vip.append(per_connection(VIP, 80, opts["connects"]))
        res["direct_us"] = statistics.median(direct) * 1e6
        res["vip_us"] = statistics.median(vip) * 1e6
        res["ratio"] = res["direct_us"] / res["vip_us"]
        res["cost"] = res["direct_empty_us"] / res["vip_us"]
        res["collateral"] = res["direct_empty_us"] / res["direct_us"]
        if nginx is not None:
            try:
                wrk_latency(res, pod_ip, opts)
                wrk_new_connections(res, pod_ip, opts, ("direct", "vip"))
                if res.get("wrkc_baseline_rps"):
                    res["wrkc_cost"] = res["wrkc_vip_rps"] / res["wrkc_baseline_rps"]
                    res["wrkc_collateral"] = res["wrkc_direct_rps"] / res["wrkc_baseline_rps"]
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                res["wrk_error"] = str(exc)[:300]
        # sync_times left svc0 on the shifted set: the first change is real
        key = ("ns0", "svc0")
        sets = (states(1)[key], states(1, shift=1)[key])
        res.update(report_cost.change_cost(dp, key, sets, opts["changes"], opts["change_seconds"]))

    try:
        return with_dataplane(mode, config, res, body)
    finally:
        report_wrk.stop(nginx)


def measure(opts: dict, timeout: float) -> dict:
    from pyagent.lab import Lab

    with Lab(pods=1) as lab:  # a fresh namespace per point
        pod = lab.pods[0]
        blob = json.dumps({**opts, "bpffs": str(lab.bpffs / "pyagent"), "cgroup": str(lab.cgroup),
                           "pod_ip": pod.ip4, "pod_ns": pod.ns, "workdir": str(lab.tmp / "nginx")})
        cmd = ["nsenter", f"--net=/run/netns/{lab.node_ns}", sys.executable,
               "-m", "tests.bench.report", "--inner", blob]
        base = {"mode": opts["mode"], "services": opts["services"]}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=REPO, check=False)
        except subprocess.TimeoutExpired:  # the lab's cgroup.kill ends its children
            return {**base, "error": f"timed out after {timeout:.0f} s", "timed_out": True}
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {**base, "error": proc.stderr.strip()[-300:]}


def machine_limits() -> dict[str, int]:
    from pyagent.lab import Lab

    with Lab(pods=0) as lab:
        return report_budget.limits(
            lab.node_exec("cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout)


def skip(results: list[dict], mode: str, n: int, budget: float, limits: dict) -> str | None:
    mine = [r for r in results if r["mode"] == mode]
    given_up = [r for r in mine if r.get("skipped") or r.get("timed_out")]
    if given_up:
        return f"{given_up[0]['services']:,} Services already did not fit"
    measured = [(r["services"], r["full_sync_s"]) for r in mine if "full_sync_s" in r]
    return report_budget.skip_reason(mode, n, n + EXTRA, measured, budget, limits)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, nargs="+", default=[10, 1000, 10000, 50000])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--connects", type=int, default=400, help="connections per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=120,
                    help="seconds a point's first full sync may take (estimated; else skipped)")
    ap.add_argument("--changes", type=int, default=50, help="one-Service changes per point")
    ap.add_argument("--wrk-seconds", type=float, default=2)
    ap.add_argument("--wrk-rounds", type=int, default=3)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--wrk-connections", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument("--replot", action="store_true",
                    help="only print the table and redraw the plots of OUT/report.json "
                         "(and of OUT/ipvs.json, if there is one)")
    ap.add_argument("--no-plot", action="store_true",
                    help="write report.json and print the table, draw nothing "
                         "(matplotlib under qemu's emulation takes minutes)")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(json.loads(args.inner))))
        return 0
    if args.replot:
        meta = json.loads((args.out / "report.json").read_text())
        show(meta.pop("results"), meta, args.out)
        if (args.out / "ipvs.json").exists():
            from tests.bench.report_plot import plot_emulated

            for f in plot_emulated(json.loads((args.out / "ipvs.json").read_text()), args.out):
                print(f"wrote {f}")
        return 0
    started = time.monotonic()
    limits = machine_limits()
    # the changes get a quarter of the budget, a point the budget several times
    # over (sync, resync, connections, wrk, changes): a wrong estimate stays bounded
    opts = {"connects": args.connects, "rounds": args.rounds, "changes": args.changes,
            "change_seconds": args.budget / 4, "wrk_seconds": args.wrk_seconds,
            "wrk_rounds": args.wrk_rounds, "wrk_threads": args.wrk_threads,
            "wrk_connections": args.wrk_connections}
    results: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def write(done: bool) -> dict:
        meta = {"command": " ".join([".venv/bin/python -m tests.bench.report", *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d"), "kernel": os.uname().release,
                "cpus": os.cpu_count(), "seconds": round(time.monotonic() - started),
                "budget_s": args.budget, "limits": limits, "options": opts,
                "extra_services": EXTRA, **({} if done else {"incomplete": True})}
        (args.out / "report.json").write_text(json.dumps({**meta, "results": results}, indent=1))
        return meta

    for n in args.services:
        for m in args.modes:
            why = skip(results, m, n, args.budget, limits)
            results.append({"mode": m, "services": n, "skipped": why} if why else
                           measure({**opts, "mode": m, "services": n}, 300 + 4 * args.budget))
            print(f"report: {m} {n}: {why or results[-1].get('error') or 'done'} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
            write(done=False)
    meta = write(done=True)
    if args.no_plot:
        print(table(results))
        return 0
    return show(results, meta, args.out)


def show(results: list[dict], meta: dict, out: Path) -> int:
    print(table(results))
    for f in plot(results, meta, out):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
