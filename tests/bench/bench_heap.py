"""Where the agent's Python heap goes at scale: tracemalloc while the real
source -> store -> sync path takes in S x E endpoints from the (test) API
server over loopback, with the eBPF dataplane's pure half (frontends and
reconciler bookkeeping) and a writer that keeps nothing.

    .venv/bin/python -m tests.bench.bench_heap [--services 10000] [--endpoints 10]
        [--top 15] [--json]

Reports, at the peak of the first list + sync and after it settles: traced
bytes, and the largest allocation sites. No kernel, no root; asserts nothing.
The kernel side (BCC, LLVM for the TC compile) is measured by bench_memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

from pyagent.core.config import NodeConfig
from pyagent.dataplanes.ebpf.capacity import AFFMATCH, BACKENDS, REVNAT, SERVICES
from pyagent.dataplanes.ebpf.dataplane import EbpfDataplane
from pyagent.dataplanes.ebpf.reconciler import KernelState, Phase, Reconciler
from pyagent.node.agent import Agent
from pyagent.sources.kube import KubeSource
from tests.bench.bench_plan import objects


class NullWriter:
    """A MapWriter with room for everything that writes nowhere."""

    def __init__(self, room: int) -> None:
        self._cap = {(m, f): room for m in (SERVICES, BACKENDS, REVNAT) for f in (4, 6)}
        self._cap[(AFFMATCH, 0)] = room

    def capacity(self) -> Mapping[tuple[str, int], int]:
        return self._cap

    def run(self, phases: list[Phase]) -> None:
        pass


class PureEbpf(EbpfDataplane):
    """The eBPF dataplane without its kernel half."""

    def setup(self) -> None:
        self.reconciler = Reconciler(NullWriter(1 << 22), KernelState())
        self._attached = True
        self.phases: list[tuple[float, float]] = []  # (heap before, peak during) per sync

    def sync(self, states, full):  # type: ignore[no-untyped-def]
        _, list_peak = tracemalloc.get_traced_memory()  # the peak so far: the lists
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            return super().sync(states, full)
        finally:
            self.phases.append((list_peak, before, tracemalloc.get_traced_memory()[1]))


def top(snapshot: tracemalloc.Snapshot, n: int) -> list[dict]:
    root = str(Path(__file__).resolve().parents[2]) + "/"
    stats = snapshot.statistics("lineno")[:n]
    return [{"site": f"{s.traceback[0].filename.replace(root, '')}:{s.traceback[0].lineno}",
             "mib": round(s.size / 2**20, 1), "blocks": s.count} for s in stats]


def measure(services: int, endpoints: int, n_top: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kubeapi import FakeKubeAPI

    api = FakeKubeAPI()
    for obj in objects(services, endpoints):
        api.create(obj)
    api.start()
    config = dataclasses.replace(NodeConfig(node_name="node-0", node_ips=("192.168.0.2",)),
                                 min_sync_period=0.0)
    agent = Agent(config, PureEbpf(config))
    from kubernetes import client
    _ = (client.CoreV1Api, client.DiscoveryV1Api)  # imported untraced: code, not data
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    source = KubeSource(agent.sink, "node-0", api_client=_client(api))
    agent.start()
    source.start()
    try:
        if not agent.synced_once.wait(600):
            raise SystemExit("no first sync within 600 s")
        first_sync = time.perf_counter() - t
        list_peak, before_sync, sync_peak = agent.dataplane.phases[0]
        gc.collect()
        settled = tracemalloc.take_snapshot()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        source.stop()
        agent.stop()
        api.stop()
    tracemalloc.stop()
    return {"endpoints": services * endpoints, "first_sync_s": round(first_sync, 2),
            "list_peak_mib": round(list_peak / 2**20, 1),
            "before_sync_mib": round(before_sync / 2**20, 1),
            "sync_peak_mib": round(sync_peak / 2**20, 1), "settled_mib": round(current / 2**20, 1),
            "top": top(settled, n_top)}


def _client(api):  # type: ignore[no-untyped-def]
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = api.url
    return client.ApiClient(cfg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = measure(args.services, args.endpoints, args.top)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['endpoints']} endpoints from the API server: first sync after "
          f"{out['first_sync_s']} s; Python heap: peak while listing {out['list_peak_mib']} "
          f"MiB, {out['before_sync_mib']} MiB when the first sync starts, peak in it "
          f"{out['sync_peak_mib']} MiB, settled {out['settled_mib']} MiB")
    for row in out["top"]:
        print(f"  {row['mib']:7.1f} MiB {row['blocks']:9d} blocks  {row['site']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
