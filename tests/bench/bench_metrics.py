"""One /metrics scrape with many Services in the maps, in a lab (its own
cgroup and bpffs): the per-service and per-backend connection counters are
per-CPU BPF arrays read at scrape time.

    .venv/bin/python -m tests.bench.bench_metrics [--services 65000] [--endpoints 2]
        [--rounds 5] [--json]

Reports, in the same run and over the same maps: the counter reads of the
first implementation (one lookup syscall per frontend and per backend,
kept here as the baseline) and the current ones (batched), and a whole
scrape before (those reads, prometheus_client's text rendering) and after
(GET /metrics from the agent's server). Both scrapes must be byte-identical.
Nothing asserts on the timings.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import statistics
import time
import urllib.request

from prometheus_client import generate_latest

from pyagent.core.config import NodeConfig
from pyagent.core.model import join_host_port
from pyagent.core.store import ServiceStore
from pyagent.dataplanes.ebpf.dataplane import EbpfDataplane
from pyagent.lab import Lab
from pyagent.observe.metrics import Metrics, start_metrics_server
from tests.bench.bench_ebpf import load_store, states


def legacy_service_connections(dp: EbpfDataplane) -> dict[str, float]:
    """The first implementation: a lookup per frontend."""
    r, m = dp.reconciler, dp.lb.maps.lb_svc_stats
    out: dict[str, float] = {}
    for fe in r.frontends():
        rev_id = r.rev_id(fe)
        if rev_id is None or not fe.service:
            continue
        per_cpu = m.get(ctypes.c_uint32(rev_id)) or []
        out[fe.service] = out.get(fe.service, 0) + sum(v.selected for v in per_cpu)
    return out


def legacy_backend_connections(dp: EbpfDataplane) -> dict[str, float]:
    r, stats = dp.reconciler, dp.lb.maps.lb_be_stats
    out: dict[str, float] = {}
    for bid, b in r.backend_ids_in_use():
        if bid < stats.max_entries:
            per_cpu = stats.get(ctypes.c_uint32(bid)) or []
            addr = join_host_port(b.ip, b.port)
            out[addr] = out.get(addr, 0) + sum(v.value for v in per_cpu)
    return out


def timed(fn, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=65000)
    ap.add_argument("--endpoints", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the generator's invalid-IP Services above 64,000
    with Lab(pods=0) as lab:
        config = dataclasses.replace(NodeConfig(node_name="node-0"),
                                     bpffs=str(lab.bpffs / "bench"), cgroup=str(lab.cgroup))
        store = ServiceStore(config)
        load_store(store, args.services, args.endpoints)
        dp = EbpfDataplane(config)
        dp.setup()
        try:
            status = dp.sync(states(store), full=True)
            assert dp.stats is not None
            metrics = Metrics()
            metrics.set_sources(map_pressure=dp.stats.map_pressure,
                                service_connections=dp.stats.service_connections,
                                backend_connections=dp.stats.backend_connections)
            _, port, stop = start_metrics_server("127.0.0.1:0", metrics)
            try:
                legacy_s, old_s = timed(lambda: legacy_service_connections(dp), args.rounds)
                legacy_b, old_b = timed(lambda: legacy_backend_connections(dp), args.rounds)
                new_s, cur_s = timed(dp.stats.service_connections, args.rounds)
                new_b, cur_b = timed(dp.stats.backend_connections, args.rounds)
                assert cur_s == old_s and cur_b == old_b, "implementations disagree"
                url = f"http://127.0.0.1:{port}/metrics"
                scrape, body = timed(lambda: urllib.request.urlopen(url, timeout=60).read(),
                                     args.rounds)
                # The scrape as it was: per-entry reads, prometheus_client's text.
                before = Metrics()
                before.set_sources(map_pressure=dp.stats.map_pressure,
                                   service_connections=lambda: legacy_service_connections(dp),
                                   backend_connections=lambda: legacy_backend_connections(dp))
                old_scrape, old_body = timed(lambda: generate_latest(before.registry),
                                             args.rounds)
                mark = b"# HELP pyagent_bpf_map_pressure"  # (the rest has creation times)
                assert old_body[old_body.index(mark):] == body[body.index(mark):], \
                    "the fast exposition differs"
            finally:
                stop()
            out = {"services": args.services, "programmed": sum(1 for v in status.values()
                                                                if v is None),
                   "frontends": len(dp.reconciler.frontends()),
                   "backends": len(dp.reconciler.backend_ids_in_use()),
                   "legacy_service_reads_s": round(legacy_s, 4),
                   "service_reads_s": round(new_s, 4),
                   "legacy_backend_reads_s": round(legacy_b, 4),
                   "backend_reads_s": round(new_b, 4),
                   "reads_speedup": round((legacy_s + legacy_b) / (new_s + new_b), 1),
                   "scrape_before_s": round(old_scrape, 4),
                   "scrape_after_s": round(scrape, 4),
                   "scrape_speedup": round(old_scrape / scrape, 1), "scrape_bytes": len(body)}
        finally:
            dp.cleanup()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
