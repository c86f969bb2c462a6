"""The README's demo: a namespace lab, the agent on examples/demo, traffic
through the ClusterIP (TCP and UDP, IPv4 and IPv6), then `pyagent maps dump`.

Everything lives in namespaces, a cgroup and a bpffs created here and removed
at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pyagent.lab import ClientResult, Lab

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"  # the repository's
VIP4, VIP6 = "10.96.0.10", "fd00:96::10"


def pyagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyagent", *args], capture_output=True,
                          text=True, check=False)


def wait_programmed(bpffs: str, vips: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = pyagent("maps", "dump", "--bpffs", bpffs, "--json")
        if res.returncode == 0:
            have = {s["frontend"]["address"] for s in json.loads(res.stdout)["services"]}
            if vips <= have:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the agent did not program {sorted(vips)} within {timeout}s")


def show(title: str, res: ClientResult) -> None:
    print(f"\n{title}: {res.total} answered, errors {dict(res.errors) or 'none'}")
    for pod, n in sorted(res.counts.items()):
        print(f"  {pod:6} {n:4}  {'#' * (n * 40 // max(res.total, 1))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=300)
    args = ap.parse_args()
    with Lab(pods=3) as lab:
        manifests = lab.tmp / "manifests"
        shutil.copytree(EXAMPLES, manifests)
        bpffs = str(lab.bpffs / "pyagent")
        print(f"lab: node netns {lab.node_ns}, pods "
              + ", ".join(f"{p.name}={p.ip4}/{p.ip6}" for p in lab.pods))
        print(f"agent: cgroup {lab.cgroup}, bpffs {bpffs}")
        agent = lab.agent(["run", "--manifests", str(manifests), "--node-name", "node-1",
                           "--cgroup", str(lab.cgroup), "--bpffs", bpffs,
                           "--healthz-bind-address", "127.0.0.1:0",
                           "--metrics-bind-address", "127.0.0.1:0"],
                          stderr=subprocess.DEVNULL)
        try:
            wait_programmed(bpffs, {VIP4, VIP6})
            show(f"TCP {VIP4}:80, {args.connections} connections",
                 lab.client(VIP4, 80, count=args.connections))
            show(f"TCP [{VIP6}]:80, {args.connections} connections",
                 lab.client(VIP6, 80, count=args.connections))
            show(f"UDP {VIP4}:53, {args.connections // 3} sockets",
                 lab.client(VIP4, 53, proto="udp", count=args.connections // 3))
            print("\n$ pyagent maps dump")
            print(pyagent("maps", "dump", "--bpffs", bpffs).stdout)
        finally:
            agent.terminate()
            agent.wait(timeout=10)
            res = pyagent("cleanup", "--cgroup", str(lab.cgroup), "--bpffs", bpffs)
            print(res.stdout.strip() or "cleanup done", res.stderr.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
