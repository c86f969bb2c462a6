"""eBPF dataplane benchmarks against the performance targets, in a lab (its own
cgroup, bpffs and namespaces; nothing touches the host's):

  1. full sync of S services x E endpoints into the kernel maps
  2. one endpoint change applied (store -> desired state -> maps), median and p99
  3. memory (RSS) of a real `pyagent run` holding S x E endpoints
  4. connect() cost through a ClusterIP versus directly to the pod, with 10 and
     with L services loaded (ratio against the direct baseline of the same run)

    .venv/bin/python -m tests.bench.bench_ebpf [--services 10000] [--endpoints 10]
        [--loaded 50000] [--connects 2000] [--memory-services 10000] [--json]
        [--bpf-lb-map-max N] [--bpf-lb-rev-nat-map-max N]   # sizes for 100k Services

Reports numbers only; nothing asserts on them (figures in docs/ come from here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyagent.core.config import NodeConfig
from pyagent.core.store import ServiceStore
from pyagent.dataplanes import registry
from pyagent.lab import Lab
from pyagent.node.agent import release_free_memory
from tests.bench.bench_plan import objects

CONNECT_SNIPPET = """
import socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
t = time.perf_counter()
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect((dst, port))
    s.close()
print((time.perf_counter() - t) / n)
"""


def load_store(store: ServiceStore, services: int, endpoints: int) -> None:
    by_kind: dict[str, list[dict]] = {"Service": [], "EndpointSlice": [], "Node": []}
    for obj in objects(services, endpoints):
        by_kind[obj["kind"]].append(obj)
    for kind, objs in by_kind.items():
        store.replace(kind, objs)


def states(store: ServiceStore) -> dict:
    out: dict = {}
    for sps in store.full_state().service_ports:
        out.setdefault((sps.service.namespace, sps.service.name), []).append(sps)
    return {k: tuple(v) for k, v in out.items()}


# Map sizes (--bpf-lb-map-max, --bpf-lb-rev-nat-map-max) for every dataplane
# and agent of this run: the defaults hold 65,535 frontends.
SIZES: dict[str, int] = {}


def sized(config: NodeConfig) -> NodeConfig:
    return dataclasses.replace(config, **SIZES)


def size_flags() -> list[str]:
    return [a for k, v in SIZES.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def maps_memlock(maps: dict) -> int:
    """Kernel memory the maps hold (their fdinfo's memlock: preallocated hash
    maps and per-CPU arrays cost their max_entries, not their use)."""
    total = 0
    for m in maps.values():
        for line in Path(f"/proc/self/fdinfo/{m.fd}").read_text().splitlines():
            if line.startswith("memlock:"):
                total += int(line.split()[1])
    return total


def bench_sync(lab: Lab, services: int, endpoints: int, changes: int) -> dict:
    config = sized(NodeConfig(node_name="node-0", node_ips=("192.168.0.2",),
                              bpffs=str(lab.bpffs / "bench"), cgroup=str(lab.cgroup)))
    store = ServiceStore(config)
    t = time.perf_counter()
    load_store(store, services, endpoints)
    all_states = states(store)
    store.take_changes()
    t_state = time.perf_counter() - t
    dp = registry.get("ebpf").create(config)
    dp.setup()
    # The programs compile meanwhile and are attached at the end of the first
    # full sync: waited for here, so that the figure is the sync's own
    # (bench_start times a whole start, compiles included).
    dp.wait_loaded()
    t = time.perf_counter()
    status = dp.sync(all_states, full=True)
    t_sync = time.perf_counter() - t
    errors = sum(1 for v in status.values() if v)
    ops = dp.reconciler.last_ops if dp.reconciler else 0
    kernel_mib = maps_memlock(dp.lb.maps.all()) / 2**20 if dp.lb else 0.0
    release_free_memory()  # what the agent does after a large sync (gc.freeze)
    # one endpoint change at a time: store event -> state -> maps
    lat = []
    slices = [o for o in objects(services, endpoints) if o["kind"] == "EndpointSlice"]
    for i in range(changes):
        sl = slices[(i * 7919) % len(slices)]
        sl["metadata"]["resourceVersion"] = str(i + 2)
        sl["endpoints"][1]["conditions"]["ready"] = not sl["endpoints"][1]["conditions"]["ready"]
        t = time.perf_counter()
        store.upsert("EndpointSlice", sl)
        keys = store.take_changes()
        dp.sync({k: store.state_for(k) for k in keys}, full=False)
        lat.append(time.perf_counter() - t)
    lat.sort()
    out = {"services": services, "endpoints": services * endpoints,
           "state_build_s": round(t_state, 3), "full_sync_s": round(t_sync, 3),
           "map_ops": ops, "errors": errors, "maps_kernel_mib": round(kernel_mib, 1),
           "change_median_ms": round(statistics.median(lat) * 1e3, 3),
           "change_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1e3, 3)}
    dp.cleanup()
    return out


def connect_cost(lab: Lab, n: int, rounds: int = 5) -> tuple[float, float]:
    """Median per-connect seconds, direct and through the VIP, in alternating
    rounds so that machine noise hits both alike."""
    pod = lab.pods[0]
    direct, vip = [], []
    for _ in range(rounds):
        d = lab.run([sys.executable, "-c", CONNECT_SNIPPET, pod.ip4, "8080", str(n)])
        v = lab.run([sys.executable, "-c", CONNECT_SNIPPET, "10.96.0.10", "80", str(n)])
        direct.append(float(d.stdout))
        vip.append(float(v.stdout))
    return statistics.median(direct), statistics.median(vip)


def bench_connect(lab: Lab, loaded: int, n: int) -> dict:
    config = sized(NodeConfig(node_name="node-0", bpffs=str(lab.bpffs / "conn"),
                              cgroup=str(lab.cgroup)))
    store = ServiceStore(config)
    dp = registry.get("ebpf").create(config)
    dp.setup()
    out = {}
    try:
        for count in (10, loaded):
            objs = list(objects(count, 2))
            # service 0 is the one we connect to: point it at pod0's server
            objs[0]["spec"]["clusterIP"] = "10.96.0.10"
            objs[0]["spec"]["ports"][0].pop("nodePort", None)
            objs[0]["spec"]["type"] = "ClusterIP"
            objs[1]["endpoints"] = [{"addresses": [lab.pods[0].ip4], "nodeName": "node-0"}]
            for kind in ("Service", "EndpointSlice", "Node"):
                store.replace(kind, [o for o in objs if o["kind"] == kind])
            dp.sync(states(store), full=True)
            connect_cost(lab, n // 10, rounds=1)  # warm up
            direct, vip = connect_cost(lab, n // 5)
            out[count] = {"direct_us": round(direct * 1e6, 1), "clusterip_us": round(vip * 1e6, 1),
                          "ratio": round(vip / direct, 3)}
    finally:
        dp.cleanup()
    return out


def fake_api_in(lab: Lab, objs: list[dict]):
    """The test API server (tests/kubeapi.py), listening inside the lab's node
    namespace: its socket is made by a thread that entered that namespace."""
    import threading

    from pyroute2 import netns

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kubeapi import FakeKubeAPI

    api = FakeKubeAPI()
    for obj in objs:
        api.create(obj)

    def start() -> None:
        netns.setns(lab.node_ns)  # this thread only
        api.start()

    t = threading.Thread(target=start)
    t.start()
    t.join()
    return api


def bench_agent_memory(lab: Lab, services: int, endpoints: int, source: str) -> dict:
    """RSS of a real `pyagent run` holding S x E endpoints, fed from a
    manifests file or from the (test) API server with paged lists."""
    objs = list(objects(services, endpoints))
    bpffs = str(lab.bpffs / f"mem-{source}")
    api = None
    if source == "manifests":
        manifests = lab.tmp / "mem-manifests"
        manifests.mkdir()
        (manifests / "all.json").write_text(json.dumps({"kind": "List", "items": objs}))
        src_args = ["--manifests", str(manifests)]
    else:
        api = fake_api_in(lab, objs)
        src_args = ["--kubeconfig", str(api.write_kubeconfig(lab.tmp / "kubeconfig"))]
    del objs
    t = time.perf_counter()
    agent = lab.agent(["run", *src_args, "--node-name", "node-0",
                       "--cgroup", str(lab.cgroup), "--bpffs", bpffs,
                       "--healthz-bind-address", "127.0.0.1:0",
                       "--metrics-bind-address", "127.0.0.1:0", *size_flags()],
                      stderr=subprocess.PIPE, text=True)
    status = Path("/proc") / str(agent.pid) / "status"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = next((ln for ln in iter(agent.stderr.readline, "") if "full sync" in ln), "")
            if line:
                break
        first_sync = time.perf_counter() - t
        time.sleep(1)
        fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines())
        rss = int(fields["VmRSS"].split()[0]) / 1024
        hwm = int(fields["VmHWM"].split()[0]) / 1024
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs", bpffs],
                       capture_output=True, check=False)
        if api is not None:
            api.stop()
    return {"source": source, "endpoints": services * endpoints, "rss_mb": round(rss, 1),
            "peak_rss_mb": round(hwm, 1), "start_to_first_sync_s": round(first_sync, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--loaded", type=int, default=50_000)
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--memory-services", type=int, default=10_000,
                    help="services (x --endpoints) held by the agent for the memory figure "
                         "(0: no memory figure)")
    ap.add_argument("--bpf-lb-map-max", type=int, help="as pyagent run's (e.g. 4194304 for "
                    "100,000 Services x 10)")
    ap.add_argument("--bpf-lb-rev-nat-map-max", type=int,
                    help="as pyagent run's (above 65,536 for more frontends)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    SIZES.update({k: v for k in ("bpf_lb_map_max", "bpf_lb_rev_nat_map_max")
                  if (v := getattr(args, k))})
    with Lab(pods=1, tcp_ports=(8080,), udp_ports=()) as lab:
        sync = bench_sync(lab, args.services, args.endpoints, args.changes)
        conn = bench_connect(lab, args.loaded, args.connects)
        mem = [bench_agent_memory(lab, args.memory_services, args.endpoints, src)
               for src in ("kube-api", "manifests")] if args.memory_services else []
    result = {"sync": sync, "connect": conn, "agent_memory": mem}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        s = sync
        print(f"full sync {s['services']} services / {s['endpoints']} endpoints: "
              f"state {s['state_build_s']} s, kernel {s['full_sync_s']} s ({s['map_ops']} map ops; "
              f"maps hold {s['maps_kernel_mib']} MiB of kernel memory)")
        print(f"one endpoint change: median {s['change_median_ms']} ms, "
              f"p99 {s['change_p99_ms']} ms")
        for m in mem:
            print(f"agent with {m['endpoints']} endpoints from {m['source']}: RSS {m['rss_mb']} "
                  f"MB (peak {m['peak_rss_mb']} MB), first sync {m['start_to_first_sync_s']} s "
                  "after start")
        for count, c in conn.items():
            print(f"connect with {count} services loaded: direct {c['direct_us']} us, "
                  f"ClusterIP {c['clusterip_us']} us, ratio {c['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
