"""Cold start: from starting `pyagent run` to the last Service answering, with
S Services x E endpoints from a manifests directory and from the (test) API
server, in a lab (own cgroup, bpffs and namespaces; nothing touches the
host's). The last Service's endpoint is the lab pod's server; a client in the
lab cgroup connects to its ClusterIP every 20 ms from the moment the agent
starts. Also reported: when the agent logged its first full sync, and the
agent's RSS (and peak) a second later; with --relist (API server), the peak
again after the API server forgot its history and every watch ended with
410 Gone, so that the agent relisted everything while holding it all.

    .venv/bin/python -m tests.bench.bench_start [--services 10000] [--endpoints 10]
        [--source manifests|kube-api|both] [--tc] [--relist] [--log] [--json]
        [--bpf-lb-map-max N] [--bpf-lb-rev-nat-map-max N]

Reports numbers; asserts nothing.
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

POLL = """
import socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
while True:
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((dst, port))
        print(time.time(), flush=True)
        break
    except OSError:
        time.sleep(0.02)
    finally:
        s.close()
"""


def vip(i: int) -> str:
    return f"172.{30 + i // 64000}.{i // 250 % 256}.{i % 250 + 1}"  # bench_plan.objects


def workload(lab: Lab, services: int, endpoints: int) -> list[dict]:
    objs = list(objects(services, endpoints))
    last = objs[2 * (services - 1) + 1]  # the last Service's slice
    last["endpoints"] = [{"addresses": [lab.pods[0].ip4], "nodeName": "node-0"}]
    return objs


def cold_start(lab: Lab, services: int, endpoints: int, source: str, tc: bool,
               show_log: bool = False, relist: bool = False,
               extra: tuple[str, ...] = ()) -> dict:
    objs = workload(lab, services, endpoints)
    bpffs = str(lab.bpffs / f"start-{source}")
    api = None
    if source == "manifests":
        directory = lab.tmp / f"start-{source}"
        directory.mkdir()
        # files of at most 50,000 objects: one at 10k Services, and within
        # parseLimits' default 64 MiB per file at 100k
        for n in range(0, len(objs), 50_000):
            (directory / f"part{n // 50_000:02}.json").write_text(
                json.dumps({"kind": "List", "items": objs[n:n + 50_000]}))
        src_args = ["--manifests", str(directory)]
    else:
        api = fake_api_in(lab, objs)
        src_args = ["--kubeconfig", str(api.write_kubeconfig(lab.tmp / f"kc-{source}"))]
    del objs
    uplink = f"v{lab.id}0"[:15]
    poller = lab.popen([sys.executable, "-c", POLL, vip(services - 1), "80"],
                       stdout=subprocess.PIPE, text=True)
    assert poller.stdout is not None and poller.stdout.readline().strip() == "ready"
    started = time.time()
    agent = lab.agent(["run", *src_args, "--node-name", "node-0", "--node-ip", "10.244.0.1",
                       "--cgroup", str(lab.cgroup), "--bpffs", bpffs,
                       *(["--interface", uplink] if tc else []),
                       "--healthz-bind-address", "127.0.0.1:0",
                       "--metrics-bind-address", "127.0.0.1:0", *extra],
                      stderr=subprocess.PIPE, text=True)
    status = Path("/proc") / str(agent.pid) / "status"
    try:
        assert agent.stderr is not None
        for line in iter(agent.stderr.readline, ""):
            if show_log:
                print(f"{time.time() - started:7.2f} {line.rstrip()}", file=sys.stderr)
            if "full sync of" in line:
                break
        first_sync = time.time() - started
        answered = float(poller.stdout.readline()) - started
        time.sleep(1)
        fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines())
        relisted = None
        if relist and api is not None:
            relisted = _relist_peak(api, agent.stderr, status, show_log, started)
    finally:
        poller.kill()
        agent.terminate()
        agent.wait(timeout=60)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs", bpffs,
                        *(["--interface", uplink] if tc else [])],
                       capture_output=True, check=False)
        if api is not None:
            api.stop()
    return {"source": source, "services": services, "endpoints": services * endpoints,
            "tc": tc, "last_service_answers_s": round(answered, 2),
            "first_full_sync_logged_s": round(first_sync, 2),
            "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            **({"peak_after_relist_mib": relisted} if relisted is not None else {})}


def _relist_peak(api, stderr, status: Path, show_log: bool, started: float) -> float:
    """VmHWM (MiB) once both big kinds were relisted (410 Gone) and applied."""
    api.compact()
    api.expire_watches()
    kinds = {"Service", "EndpointSlice"}
    for line in iter(stderr.readline, ""):
        if show_log:
            print(f"{time.time() - started:7.2f} {line.rstrip()}", file=sys.stderr)
        if "relisting" in line:
            kinds.discard(line.split(" INFO ")[-1].split(":")[1].strip())
            if not kinds:
                break
    time.sleep(5)  # the relist (about 2 s at start) and its sync
    fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines())
    return round(int(fields["VmHWM"].split()[0]) / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--source", choices=("manifests", "kube-api", "both"), default="both")
    ap.add_argument("--tc", action="store_true", help="TC programs on a node interface too")
    ap.add_argument("--relist", action="store_true",
                    help="API server: also the peak of a relist of everything (410 Gone)")
    ap.add_argument("--log", action="store_true", help="the agent's log, timed, on stderr")
    ap.add_argument("--bpf-lb-map-max", help="passed to pyagent run (100,000 Services: 2097152)")
    ap.add_argument("--bpf-lb-rev-nat-map-max",
                    help="passed to pyagent run (100,000 Services: 131072)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    extra = tuple(a for flag in ("bpf_lb_map_max", "bpf_lb_rev_nat_map_max")
                  if getattr(args, flag) for a in (f"--{flag.replace('_', '-')}",
                                                   getattr(args, flag)))
    sources = ("manifests", "kube-api") if args.source == "both" else (args.source,)
    with Lab(pods=1, tcp_ports=(8080,), udp_ports=()) as lab:
        results = [cold_start(lab, args.services, args.endpoints, s, args.tc, args.log,
                              args.relist, extra) for s in sources]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['endpoints']} endpoints from {r['source']}{' (TC on)' if r['tc'] else ''}: "
              f"last Service answers {r['last_service_answers_s']} s after start (first full "
              f"sync logged at {r['first_full_sync_logged_s']} s); RSS {r['rss_mib']} MiB, "
              f"peak {r['peak_mib']} MiB" + (f"; peak after a full relist "
                                              f"{r['peak_after_relist_mib']} MiB"
                                              if "peak_after_relist_mib" in r else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
