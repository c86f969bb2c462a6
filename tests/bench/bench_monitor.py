"""What decision events cost connect(), in a lab (own cgroup, bpffs and
namespaces): the socket LB built without any event code (baseline), the
normal build with nobody listening (off), and with a `pyagent monitor`
listener draining its ring (on).

    .venv/bin/python -m tests.bench.bench_monitor [--connects 2000] [--rounds 5] [--json]

Two figures per mode, taken in alternating rounds so machine noise hits
every mode alike, reported as ratios against the baseline of the same run:
  - lb4_connect's own run time per call, from the kernel's BPF statistics
    (BPF_ENABLE_STATS, held only while this runs; bpftool reads them)
  - wall time per connect()+close() of a client in the lab cgroup
Reports numbers only; nothing asserts on them.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading

from pyagent.core.config import NodeConfig
from pyagent.core.store import ServiceStore
from pyagent.dataplanes import registry
from pyagent.dataplanes.ebpf import events
from pyagent.dataplanes.ebpf import socket_lb as programs
from pyagent.lab import Lab
from tests.bench.bench_ebpf import CONNECT_SNIPPET, states
from tests.bench.bench_plan import objects

_SYS_BPF, _BPF_ENABLE_STATS, _BPF_STATS_RUN_TIME = 321, 32, 0
MODES = ("baseline", "off", "on")


def enable_bpf_stats() -> int:
    """An fd that keeps the kernel's per-program run-time statistics on."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 4)(_BPF_STATS_RUN_TIME)
    fd = libc.syscall(_SYS_BPF, _BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return fd


def run_stats(cgroup: str) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the lb4_connect attached to cgroup."""
    prog_id = programs.attached_programs(cgroup)["lb4_connect"][0]
    out = subprocess.run(["bpftool", "--json", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


class Drain:
    """A monitor's listener and a thread that empties its ring."""

    def __init__(self, bpffs: str) -> None:
        self.listener = events.Listener(bpffs)
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen += len(self.listener.events(0.05))

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        lost = self.listener.lost()
        self.listener.close()
        return lost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connects", type=int, default=2000, help="connect() calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with Lab(pods=1, tcp_ports=(8080,), udp_ports=()) as lab:
        config = dataclasses.replace(NodeConfig(node_name="node-0"),
                                     bpffs=str(lab.bpffs / "mon"), cgroup=str(lab.cgroup))
        store = ServiceStore(config)
        objs = list(objects(10, 2))
        objs[0]["spec"].update(clusterIP="10.96.0.10", type="ClusterIP")
        objs[0]["spec"]["ports"][0].pop("nodePort", None)
        objs[1]["endpoints"] = [{"addresses": [lab.pods[0].ip4], "nodeName": "node-0"}]
        for kind in ("Service", "EndpointSlice", "Node"):
            store.replace(kind, [o for o in objs if o["kind"] == kind])
        dp = registry.get("ebpf").create(config)
        dp.setup()
        variant = programs.kernel_variant()
        bare = programs.load(config.bpffs, variant=dataclasses.replace(
            variant, defines={**variant.defines, "LB_MONITOR": 0}))
        assert dp.lb is not None
        stats_fd = enable_bpf_stats()
        per_call: dict[str, list[float]] = {m: [] for m in MODES}
        wall: dict[str, list[float]] = {m: [] for m in MODES}
        seen = lost = 0
        try:
            dp.sync(states(store), full=True)
            lab.run([sys.executable, "-c", CONNECT_SNIPPET, "10.96.0.10", "80", "200"])
            for _ in range(args.rounds):
                for mode in MODES:
                    programs.attach(bare if mode == "baseline" else dp.lb, config.bpffs,
                                    config.cgroup)
                    drain = Drain(config.bpffs) if mode == "on" else None
                    t0, n0 = run_stats(config.cgroup)
                    res = lab.run([sys.executable, "-c", CONNECT_SNIPPET, "10.96.0.10", "80",
                                   str(args.connects)])
                    t1, n1 = run_stats(config.cgroup)
                    if drain is not None:
                        lost += drain.close()
                        seen += drain.seen
                    per_call[mode].append((t1 - t0) / max(1, n1 - n0))
                    wall[mode].append(float(res.stdout))
        finally:
            os.close(stats_fd)
            bare.close()
            dp.cleanup()
    med = {m: statistics.median(per_call[m]) for m in MODES}
    wmed = {m: statistics.median(wall[m]) for m in MODES}
    out = {"connects_per_round": args.connects, "rounds": args.rounds,
           "events_seen_on": seen, "events_lost_on": lost,
           **{m: {"prog_ns_per_connect": round(med[m], 1),
                  "prog_ratio_to_baseline": round(med[m] / med["baseline"], 3),
                  "connect_us": round(wmed[m] * 1e6, 2),
                  "connect_ratio_to_baseline": round(wmed[m] / wmed["baseline"], 3)}
              for m in MODES}}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'mode':9} {'prog ns/connect':>16} {'ratio':>7} {'connect us':>11} {'ratio':>7}")
        for m in MODES:
            r = out[m]
            print(f"{m:9} {r['prog_ns_per_connect']:>16} {r['prog_ratio_to_baseline']:>7} "
                  f"{r['connect_us']:>11} {r['connect_ratio_to_baseline']:>7}")
        print(f"events with the monitor on: {seen} seen, {lost} lost")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
