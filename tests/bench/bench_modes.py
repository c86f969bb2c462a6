"""Full-sync time of every dataplane mode available here, for 1,000 and
10,000 Services (one TCP port, 2 endpoints each, every 10th a NodePort),
each run in a fresh namespace lab (root; nothing touches the root netns):

    .venv/bin/python -m tests.bench.bench_modes [--services 1000 10000] [--modes ...]

Per mode and size it reports: setup, the first full sync (empty kernel
state), a second full sync (the periodic resync), and a partial sync that
changes one Service's endpoints. Not collected by pytest; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyagent.core.config import NodeConfig
from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.state import ServicePortState

NODE_IP = "10.244.0.1"
MODES = ("iptables", "nftables", "userspace", "ebpf")


def states(n: int, shift: int = 0) -> dict:
    out = {}
    for i in range(n):
        ip = f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"
        sp = ServicePort(f"ns{i % 50}", f"svc{i}", "http", "TCP", 80, 4, ip,
                         node_port=30000 + i // 10 if i % 10 == 0 else 0,
                         service_type="NodePort" if i % 10 == 0 else "ClusterIP")
        eps = tuple(Endpoint(f"10.{128 + (2 * i + k) // 65536}.{(2 * i + k) // 256 % 256}."
                             f"{(2 * i + k) % 256}", 8080 + shift, node_name="node-1",
                             is_local=True) for k in range(2))
        out[(sp.namespace, sp.name)] = (ServicePortState(sp, eps, None, eps, True),)
    return out


def sync_times(dp, all_states: dict) -> dict:
    """Seconds of the first full sync, a second one (the periodic resync) and
    a partial sync changing svc0's endpoints (the first of states(n)), and how
    many Services the first full sync refused (sync_errors)."""
    out = {}
    t = time.perf_counter()
    status = dp.sync(all_states, full=True)
    out["full_sync_s"] = time.perf_counter() - t
    out["sync_errors"] = sum(1 for err in status.values() if err)
    t = time.perf_counter()
    dp.sync(all_states, full=True)
    out["resync_s"] = time.perf_counter() - t
    changed = states(1, shift=1)[("ns0", "svc0")]
    t = time.perf_counter()
    dp.sync({("ns0", "svc0"): changed}, full=False)
    out["partial_sync_s"] = time.perf_counter() - t
    return out


def with_dataplane(mode: str, config: NodeConfig, res: dict, body: Callable) -> dict:
    """body(dataplane) fills res; a mode that cannot start here or a failure
    is reported in res["error"], and the dataplane is cleaned up always."""
    from pyagent.dataplanes import registry

    try:
        dp = registry.get(mode).create(config)
    except Exception as exc:  # e.g. no ip_vs in this kernel
        return {**res, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    try:
        body(dp)
    except Exception as exc:  # report, then still clean up
        res["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        dp.cleanup()
        dp.close()
    return res


def inner(mode: str, n: int, bpffs: str, cgroup: str) -> dict:
    """Runs inside the lab's node namespace."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    config = NodeConfig(node_name="node-1", node_ips=(NODE_IP,), cluster_cidrs=("10.244.0.0/16",),
                        mode=mode, bpffs=bpffs, cgroup=cgroup)
    all_states = states(n)
    res: dict = {"mode": mode, "services": n}

    def body(dp) -> None:
        t = time.perf_counter()
        dp.setup()
        res["setup_s"] = time.perf_counter() - t
        res.update(sync_times(dp, all_states))

    return with_dataplane(mode, config, res, body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--inner", nargs=4, metavar=("MODE", "N", "BPFFS", "CGROUP"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        mode, n, bpffs, cgroup = args.inner
        print(json.dumps(inner(mode, int(n), bpffs, cgroup)))
        return 0

    from pyagent.lab import Lab

    results = []
    for n in args.services:
        for mode in args.modes:
            with Lab(pods=0) as lab:  # a fresh namespace per run
                cmd = ["nsenter", f"--net=/run/netns/{lab.node_ns}", sys.executable,
                       str(Path(__file__).resolve()), "--inner", mode, str(n),
                       str(lab.bpffs / "pyagent"), str(lab.cgroup)]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                                      cwd=Path(__file__).resolve().parents[2], check=False)
                try:
                    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                except (IndexError, json.JSONDecodeError):
                    results.append({"mode": mode, "services": n,
                                    "error": proc.stderr.strip()[-300:]})
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'mode':10} {'services':>8} {'setup':>8} {'full':>8} {'resync':>8} {'partial':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['mode']:10} {r['services']:8}  error: {r['error']}")
            continue
        print(f"{r['mode']:10} {r['services']:8} {r['setup_s']:8.3f} {r['full_sync_s']:8.3f} "
              f"{r['resync_s']:8.3f} {r['partial_sync_s']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
