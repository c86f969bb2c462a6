"""The five-mode report: what one new connection costs in each dataplane mode
with N Services loaded, and what syncing them costs, with plots.

For every mode (iptables, ipvs, nftables, userspace, ebpf; one that cannot
run here is reported with why) and every N, in a fresh namespace lab (own
node namespace, cgroup and bpffs; nothing touches the host's):

  - connection cost: connect(), read the pod's one-line answer, close();
    the target Service sorts after all others (namespace zz-bench), so
    modes that match Services one by one show their worst case;
    through a ClusterIP and directly to the same pod, in alternating rounds
    (medians); ratio = VIP / direct connections per second in those rounds,
    cost = VIP with N Services loaded / direct before any rule existed (what
    the mode costs a connection; 1.0: nothing);
  - collateral: direct connections with the N Services loaded against
    direct connections of the same lab before any rule existed;
  - full sync, periodic resync and a one-Service partial sync (seconds).

    .venv/bin/python -m tests.bench.report [--services 10 1000 10000]
        [--modes ...] [--connects 400] [--rounds 5] [--out docs/bench]

Writes OUT/report.json, OUT/connect.png and OUT/sync.png (plots need
matplotlib, the `bench` extra: `.venv/bin/pip install matplotlib`; without it only the JSON
and the table). Reports numbers; asserts nothing.
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
from tests.bench.bench_modes import NODE_IP, states, sync_times, with_dataplane

MODES = ("iptables", "ipvs", "nftables", "userspace", "ebpf")
VIP = "10.95.0.10"  # outside the addresses bench_modes.states gives the others
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


def inner(mode: str, n: int, bpffs: str, cgroup: str, pod_ip: str, connects: int,
          rounds: int) -> dict:
    """Runs inside the lab's node namespace (and, for the socket hooks, its cgroup)."""
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    config = NodeConfig(node_name="node-1", node_ips=(NODE_IP,), cluster_cidrs=("10.244.0.0/16",),
                        mode=mode, bpffs=bpffs, cgroup=cgroup)
    all_states = states(n)
    sp = ServicePort("zz-bench", "target", "http", "TCP", 80, 4, VIP)
    ep = (Endpoint(pod_ip, 8080, node_name="node-1", is_local=True),)
    all_states[("zz-bench", "target")] = (ServicePortState(sp, ep, None, ep, True),)
    # Locally sent packets are routed before the nat OUTPUT hook rewrites
    # them: the VIP needs a route (a node's default route), here the lab's own.
    subprocess.run(["ip", "route", "replace", f"{VIP}/32", "dev", "br0"], check=True)
    res: dict = {"mode": mode, "services": n}
    per_connection(pod_ip, 8080, connects // 4)  # warm up
    res["direct_empty_us"] = statistics.median(
        per_connection(pod_ip, 8080, connects) for _ in range(rounds)) * 1e6

    def body(dp) -> None:
        dp.setup()
        res.update(sync_times(dp, all_states))
        per_connection(VIP, 80, connects // 4)
        direct, vip = [], []
        for _ in range(rounds):
            direct.append(per_connection(pod_ip, 8080, connects))
            vip.append(per_connection(VIP, 80, connects))
        res["direct_us"] = statistics.median(direct) * 1e6
        res["vip_us"] = statistics.median(vip) * 1e6
        res["ratio"] = res["direct_us"] / res["vip_us"]
        res["cost"] = res["direct_empty_us"] / res["vip_us"]
        res["collateral"] = res["direct_empty_us"] / res["direct_us"]

    return with_dataplane(mode, config, res, body)


def measure(mode: str, n: int, connects: int, rounds: int) -> dict:
    from pyagent.lab import Lab

    with Lab(pods=1) as lab:  # a fresh namespace per point
        cmd = ["nsenter", f"--net=/run/netns/{lab.node_ns}", sys.executable,
               "-m", "tests.bench.report", "--inner", mode, str(n),
               str(lab.bpffs / "pyagent"), str(lab.cgroup), lab.pods[0].ip4,
               str(connects), str(rounds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                              cwd=Path(__file__).resolve().parents[2], check=False)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"mode": mode, "services": n, "error": proc.stderr.strip()[-300:]}


def table(results: list[dict]) -> str:
    rows = [f"{'mode':10} {'services':>8} {'direct us':>10} {'VIP us':>8} {'ratio':>6} "
            f"{'cost':>5} "
            f"{'collat.':>7} {'full s':>7} {'resync s':>8} {'partial s':>9}"]
    for r in results:
        if "error" in r:
            rows.append(f"{r['mode']:10} {r['services']:8}  {r['error']}")
            continue
        rows.append(f"{r['mode']:10} {r['services']:8} {r['direct_us']:10.1f} "
                    f"{r['vip_us']:8.1f} {r['ratio']:6.2f} {r['cost']:5.2f} {r['collateral']:7.2f} "
                    f"{r['full_sync_s']:7.3f} {r['resync_s']:8.3f} {r['partial_sync_s']:9.4f}")
    return "\n".join(rows)


def plot(results: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed: no plots", file=sys.stderr)
        return []
    ok = [r for r in results if "error" not in r]
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)]
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in modes:
        rs = sorted((r for r in ok if r["mode"] == m), key=lambda r: r["services"])
        xs = [r["services"] for r in rs]
        axes[0].plot(xs, [r["cost"] for r in rs], marker="o", label=m)
        axes[1].plot(xs, [r["collateral"] for r in rs], marker="o", label=m)
    for ax, title in ((axes[0], "new connections/s through a ClusterIP\n"
                                "(direct to the pod, no rules = 1.0)"),
                      (axes[1], "direct connections/s with the rules loaded\n"
                                "(no rules = 1.0)")):
        ax.set_xscale("log")
        ax.set_xlabel("Services loaded")
        ax.set_ylim(0, 1.6)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "connect.png")
    fig.savefig(files[-1], dpi=90)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in modes:
        rs = sorted((r for r in ok if r["mode"] == m), key=lambda r: r["services"])
        line, = ax.plot([r["services"] for r in rs], [r["full_sync_s"] for r in rs],
                        marker="o", label=f"{m} full")
        ax.plot([r["services"] for r in rs], [r["partial_sync_s"] for r in rs], marker="x",
                linestyle="--", color=line.get_color(), label=f"{m} one Service")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Services loaded")
    ax.set_ylabel("seconds")
    ax.set_title("sync time: full (first) and one changed Service", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    files.append(out / "sync.png")
    fig.savefig(files[-1], dpi=90)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, nargs="+", default=[10, 1000, 10000])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--connects", type=int, default=400, help="connections per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument("--inner", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        mode, n, bpffs, cgroup, pod, connects, rounds = args.inner
        print(json.dumps(inner(mode, int(n), bpffs, cgroup, pod, int(connects), int(rounds))))
        return 0
    results = [measure(m, n, args.connects, args.rounds)
               for n in args.services for m in args.modes]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python -m tests.bench.report", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"), "kernel": os.uname().release,
            "cpus": os.cpu_count()}
    (args.out / "report.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    print(table(results))
    for f in plot(results, args.out):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
