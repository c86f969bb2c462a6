"""Memory of the agent as the DaemonSet runs it, for its resource requests
and limits (deploy/kubernetes/daemonset.yaml, docs/install.md):

  - the socket LB's compile child (BCC + LLVM, run once at start), max RSS
    (the TC programs' child, run after it, is of the same size);
  - a real `pyagent run` from the (test) API server holding S x E endpoints
    with TC programs on an interface: steady RSS and peak (VmHWM) after the
    first full sync;
  - the container's worst case: the agent's peak plus the child's (the
    children run at start, one at a time, so this over-counts).

    .venv/bin/python -m tests.bench.bench_memory [--services 10000] [--endpoints 10] [--json]

In a lab (own cgroup, bpffs, namespaces). Reports numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pyagent.lab import Lab
from tests.bench.bench_ebpf import fake_api_in
from tests.bench.bench_plan import objects


def compile_child_peak(lab: Lab) -> float:
    """Max RSS (MiB) of the compile child, the command load_out_of_process runs."""
    bpffs = str(lab.bpffs / "mem-child")
    Path(bpffs).mkdir()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m",
                          "pyagent.dataplanes.ebpf.socket_lb", "--bpffs", bpffs],
                         capture_output=True, text=True, check=True)
    subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs", bpffs],
                   capture_output=True, check=False)
    return int(res.stderr.strip().splitlines()[-1]) / 1024


def agent_peak(lab: Lab, services: int, endpoints: int) -> dict:
    api = fake_api_in(lab, list(objects(services, endpoints)))
    bpffs = str(lab.bpffs / "mem-agent")
    uplink = f"v{lab.id}0"[:15]  # a node-side link to put the TC programs on
    t = time.perf_counter()
    agent = lab.agent(["run", "--kubeconfig", str(api.write_kubeconfig(lab.tmp / "kc")),
                       "--node-name", "node-0", "--node-ip", "10.244.0.1",
                       "--cgroup", str(lab.cgroup), "--bpffs", bpffs, "--interface", uplink,
                       "--healthz-bind-address", "127.0.0.1:0",
                       "--metrics-bind-address", "127.0.0.1:0"],
                      stderr=subprocess.PIPE, text=True)
    status = Path("/proc") / str(agent.pid) / "status"
    try:
        assert agent.stderr is not None
        for line in iter(agent.stderr.readline, ""):
            if "full sync of" in line:
                break
        first_sync = time.perf_counter() - t
        time.sleep(2)
        fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines())
    finally:
        agent.terminate()
        agent.wait(timeout=60)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs", bpffs,
                        "--interface", uplink], capture_output=True, check=False)
        api.stop()
    return {"endpoints": services * endpoints,
            "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            "first_sync_s": round(first_sync, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with Lab(pods=1, tcp_ports=(8080,), udp_ports=()) as lab:
        child = compile_child_peak(lab)
        agent = agent_peak(lab, args.services, args.endpoints)
    result = {"compile_child_peak_mib": round(child, 1), "agent": agent,
              "container_worst_case_mib": round(child + agent["peak_mib"], 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"compile child: peak {result['compile_child_peak_mib']} MiB")
        print(f"agent holding {agent['endpoints']} endpoints (API server, TC on): RSS "
              f"{agent['rss_mib']} MiB, peak {agent['peak_mib']} MiB, first full sync "
              f"{agent['first_sync_s']} s after start")
        print(f"peak, agent and compile child together: "
              f"{round(result['container_worst_case_mib'])} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
