"""End to end, one endpoint change: from the (test) API server committing an
EndpointSlice update to a client in the lab seeing the datapath change,
through the real client's watch, the store, the sync runner and the maps,
with S Services x E endpoints loaded.

The last Service alternates between no endpoint (its ClusterIP refuses:
ECONNREFUSED at connect()) and the lab pod (connect() succeeds). A client
in the lab cgroup is told which to expect, then connects in a loop (every
0.2 ms) until it sees it; the change is committed right after. Changes are
spaced by more than minSyncPeriod (default 1 s, as kube-proxy's), so each
one is synced as it comes, not coalesced.

    .venv/bin/python -m tests.bench.bench_watch [--services 10000] [--endpoints 10]
        [--changes 30] [--json]

Reports numbers; asserts nothing. Nothing touches the host's namespaces.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

from pyagent.lab import Lab
from tests.bench.bench_ebpf import fake_api_in
from tests.bench.bench_plan import objects
from tests.bench.bench_start import vip

WAIT = """
import errno, socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
for want in sys.stdin:
    up = want.strip() == "up"
    while True:
        s = socket.socket()
        try:
            s.connect((dst, port))
            seen = True
        except ConnectionRefusedError:
            seen = False
        finally:
            s.close()
        if seen == up:
            print(time.time(), flush=True)
            break
        time.sleep(0.0002)
"""


def measure(lab: Lab, services: int, endpoints: int, changes: int) -> dict:
    objs = list(objects(services, endpoints))
    last = objs[2 * (services - 1) + 1]  # the last Service's slice
    last["endpoints"] = []
    api = fake_api_in(lab, objs)
    del objs
    bpffs = str(lab.bpffs / "watch")
    waiter = lab.popen([sys.executable, "-c", WAIT, vip(services - 1), "80"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert waiter.stdout is not None and waiter.stdin is not None
    assert waiter.stdout.readline().strip() == "ready"
    agent = lab.agent(["run", "--kubeconfig", str(api.write_kubeconfig(lab.tmp / "kc-watch")),
                       "--node-name", "node-0", "--node-ip", "10.244.0.1",
                       "--cgroup", str(lab.cgroup), "--bpffs", bpffs,
                       "--healthz-bind-address", "127.0.0.1:0",
                       "--metrics-bind-address", "127.0.0.1:0"],
                      stderr=subprocess.PIPE, text=True)
    lat: list[float] = []
    try:
        assert agent.stderr is not None
        for line in iter(agent.stderr.readline, ""):
            if "full sync of" in line:
                break
        waiter.stdin.write("down\n")  # the Service starts without endpoints
        waiter.stdin.flush()
        waiter.stdout.readline()
        slice_ = copy.deepcopy(last)
        for i in range(changes):
            time.sleep(1.2)  # > minSyncPeriod: this change is synced on its own
            up = i % 2 == 0
            slice_["endpoints"] = [{"addresses": [lab.pods[0].ip4], "nodeName": "node-0"}] \
                if up else []
            waiter.stdin.write("up\n" if up else "down\n")
            waiter.stdin.flush()
            committed = time.time()
            api.update(slice_)
            lat.append(float(waiter.stdout.readline()) - committed)
    finally:
        waiter.kill()
        agent.terminate()
        agent.wait(timeout=60)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs", bpffs],
                       capture_output=True, check=False)
        api.stop()
    lat.sort()
    return {"services": services, "endpoints": services * endpoints, "changes": len(lat),
            "median_ms": round(statistics.median(lat) * 1e3, 2),
            "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1e3, 2),
            "max_ms": round(lat[-1] * 1e3, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with Lab(pods=1, tcp_ports=(8080,), udp_ports=()) as lab:
        r = measure(lab, args.services, args.endpoints, args.changes)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['endpoints']} endpoints loaded, {r['changes']} EndpointSlice updates, API "
          f"server commit -> datapath: median {r['median_ms']} ms, p99 {r['p99_ms']} ms, "
          f"max {r['max_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
