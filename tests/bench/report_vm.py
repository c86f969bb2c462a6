"""The five-mode report's IPVS rows, measured inside a qemu VM: this host's
kernel has no IPVS (CONFIG_IP_VS), so tests.bench.report can only record an
error for ipvs here. These rows are reported separately and marked emulated.

vagrant/qemu-run boots a Debian kernel (default 6.12) under qemu with TCG
(software emulation, no KVM, as in CI), with the host's root file system
read-only over 9p and this checkout live; inside, as root:

    .venv/bin/python -m tests.bench.report --modes ipvs --no-plot
        --out /run/pyagent-vm/bench [the load options below]

(each point in its own namespace lab, as on the host). report.json comes back
through qemu-run's writable results share (PYAGENT_VM_CACHE or
vagrant/.cache, bench/<release>-<time>/bench/report.json); this keeps its
rows, marks them emulated and writes OUT/ipvs.json (with the kernel, the VM,
the host and both commands) and OUT/ipvs.png. TCG makes a connection 40-100x
slower than the host (6-14 ms for the Python client against 130-150 us),
so the defaults are a lighter load than the host report's (--connects 100
--rounds 3 --changes 20), N up to 10,000, and a far longer --budget for
the first full sync: under TCG a sync of 10
Services already takes 5-8 s of fixed cost, which the report's linear
extrapolation from N=10 takes for per-Service cost (at --budget 240 and 600
it skipped 1,000 Services as "467 s" and "750 s"); --timeout bounds the run.
wrk and nginx come from the host (`apt-get install -y wrk nginx-light`: the
VM sees the host's root file system).

    .venv/bin/python -m tests.bench.report_vm [--kernel 6.12]
        [--services 10 1000 10000] [--connects 100] [--rounds 3]
        [--budget 1500] [--timeout 3600] [--cpus 2] [--memory 4096] [--out docs/bench]
    .venv/bin/python -m tests.bench.report_vm --from DIR   # DIR/.../bench/report.json again
    .venv/bin/python -m tests.bench.report_vm --replot     # OUT/ipvs.png from OUT/ipvs.json

Runs one VM (a 2-core machine: never two). Root, as qemu-run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.report_plot import plot_emulated
from tests.bench.report_table import table

REPO = Path(__file__).resolve().parents[2]
QEMU_RUN = "vagrant/qemu-run"
VM_RESULTS = "/run/pyagent-vm"  # qemu-run's writable share, inside the VM
ACCEL = "tcg"  # qemu-run's only accelerator: the rows are emulated by design
MODE = "ipvs"


def cache_dir() -> Path:
    """qemu-run's cache (the same environment variable and default)."""
    return Path(os.environ.get("PYAGENT_VM_CACHE", REPO / "vagrant" / ".cache"))


def vm_command(args: argparse.Namespace) -> list[str]:
    """The report command run inside the VM (from the checkout)."""
    return [".venv/bin/python", "-m", "tests.bench.report", "--modes", MODE, "--no-plot",
            "--services", *map(str, args.services), "--connects", str(args.connects),
            "--rounds", str(args.rounds), "--budget", f"{args.budget:g}",
            "--changes", str(args.changes), "--wrk-seconds", f"{args.wrk_seconds:g}",
            "--wrk-rounds", str(args.wrk_rounds), "--out", f"{VM_RESULTS}/bench"]


def qemu_command(args: argparse.Namespace, results: Path, inner: list[str]) -> list[str]:
    return [QEMU_RUN, "--kernel", args.kernel, "--results-dir", str(results),
            "--timeout", str(args.timeout), "--cpus", str(args.cpus),
            "--memory", str(args.memory), "--exec", shlex.join(inner)]


def find_report(results: Path) -> Path:
    """The report.json of the one VM run under `results` (qemu-run puts each
    VM's share in results/<release>-<time>-<random>/)."""
    found = sorted(results.glob("*/bench/report.json"))
    if len(found) != 1:
        logs = sorted(results.glob("*/console.log"))
        where = f"; see {logs[-1]} and output.log beside it" if logs else ""
        raise FileNotFoundError(f"{len(found)} report.json under {results}{where}")
    return found[0]


def merge(vm_report: dict, *, command: str, release: str, cpus: int, memory_mib: int,
          host: dict, note: str = "") -> dict:
    """ipvs.json from the VM's report.json: its meta and ipvs rows, each row
    marked emulated, the VM and host recorded, the command that made it
    (`command`) and the one that ran in the VM (`vm_command`). A run cut
    short keeps its rows and says so (incomplete, vm_note)."""
    rows = [r for r in vm_report["results"] if r.get("mode") == MODE]
    if not rows:
        raise ValueError(f"no {MODE} rows in the VM's report (modes: "
                         f"{sorted({r.get('mode') for r in vm_report['results']})})")
    if vm_report.get("kernel") and vm_report["kernel"] != release:
        raise ValueError(f"the report ran under {vm_report['kernel']}, the VM booted {release}")
    meta = {k: v for k, v in vm_report.items() if k not in ("results", "command", "kernel",
                                                               "cpus")}
    out = {
        "emulated": True,
        "label": f"emulated (qemu {ACCEL.upper()}, kernel {release})",
        "command": command,
        "vm_command": vm_report["command"],
        **meta,
        "kernel": release,
        "vm": {"accel": ACCEL, "kernel": release, "cpus": vm_report.get("cpus", cpus),
               "memory_mib": memory_mib},
        "host": host,
    }
    if note:
        out["vm_note"] = note
    out["results"] = [{**r, "emulated": True} for r in rows]
    return out


def option_values(command: str, option: str) -> list[str]:
    """The values after `option` in a shell command line, up to the next option."""
    words = shlex.split(command)
    if option not in words:
        return []
    rest = words[words.index(option) + 1:]
    end = next((i for i, w in enumerate(rest) if w.startswith("--")), len(rest))
    return rest[:end]


def unfinished(meta: dict, why: str) -> None:
    """A row for every N the VM's report was asked for (its --services) but
    wrote nothing about: the VM stopped first. Each says so instead of the
    point silently missing from the table and the plot."""
    done = {r["services"] for r in meta["results"]}
    for n in map(int, option_values(meta["vm_command"], "--services")):
        if n not in done:
            meta["results"].append({"mode": MODE, "services": n, "emulated": True,
                                    "error": f"not measured: {why}"})


def host_info() -> dict:
    return {"kernel": os.uname().release, "cpus": os.cpu_count()}


def release_of(report: Path) -> str:
    """The VM's `uname -r`, which qemu-run's stage 2 writes beside the run."""
    f = report.parent.parent / "release"
    return f.read_text().strip() if f.exists() else ""


def write(meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{MODE}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(table(meta["results"]))
    for f in plot_emulated(meta, out):
        print(f"wrote {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="6.12",
                    help="qemu-run's --kernel: a Debian series or image package (default 6.12)")
    ap.add_argument("--services", type=int, nargs="+", default=[10, 1000, 10000])
    ap.add_argument("--connects", type=int, default=100, help="connections per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1500,
                    help="seconds a point's first full sync may take (estimated; else skipped)")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--wrk-seconds", type=float, default=2)
    ap.add_argument("--wrk-rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="vCPUs (default 2)")
    ap.add_argument("--memory", type=int, default=4096, help="VM MiB (default 4096)")
    ap.add_argument("--timeout", type=int, default=3600,
                    help="seconds before the VM is killed (default 3600; the rows "
                         "measured by then are kept, marked incomplete)")
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument("--from", dest="source", type=Path, metavar="DIR",
                    help="boot nothing: merge the report.json of an earlier run's "
                         "results directory (printed by a run)")
    ap.add_argument("--replot", action="store_true",
                    help="only print the table and redraw OUT/ipvs.png from OUT/ipvs.json")
    args = ap.parse_args()
    if args.replot:
        meta = json.loads((args.out / f"{MODE}.json").read_text())
        print(table(meta["results"]))
        for f in plot_emulated(meta, args.out):
            print(f"wrote {f}")
        return 0
    if args.source:
        results = args.source
        run = json.loads((results / "report_vm.json").read_text())
    else:
        runs = cache_dir() / "bench"
        runs.mkdir(parents=True, exist_ok=True)
        results = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
        command = " ".join([".venv/bin/python -m tests.bench.report_vm", *sys.argv[1:]])
        qemu = qemu_command(args, results, vm_command(args))
        print(f"report_vm: {shlex.join(qemu)}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(qemu, cwd=REPO, check=False).returncode
        # how this run was made, for --from
        run = {"command": command, "cpus": args.cpus, "memory_mib": args.memory, "rc": rc,
               "seconds": round(time.monotonic() - t0), "qemu_run": shlex.join(qemu)}
        (results / "report_vm.json").write_text(json.dumps(run, indent=1) + "\n")
        print(f"report_vm: qemu-run exited {rc}; results in {results}", file=sys.stderr)
    report = find_report(results)
    vm_json = json.loads(report.read_text())
    note = f"qemu-run exited {run['rc']}" if run["rc"] else ""
    timeout = option_values(run["qemu_run"], "--timeout")
    stopped = ("the VM stopped before the report finished"
               + (f" (qemu-run --timeout {timeout[0]} s)" if timeout else ""))
    if vm_json.get("incomplete"):
        note = "; ".join(filter(None, [note, stopped]))
    meta = merge(vm_json, command=run["command"], release=release_of(report) or vm_json["kernel"],
                 cpus=run["cpus"], memory_mib=run["memory_mib"], host=host_info(), note=note)
    if vm_json.get("incomplete"):
        unfinished(meta, stopped)
    meta["vm"]["seconds"] = run["seconds"]
    meta["qemu_run"] = run["qemu_run"]
    write(meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
