"""The IPVS rows of the five-mode report measured in a qemu VM
(tests/bench/report_vm.py): the commands it runs, finding the VM's
report.json, merging it into ipvs.json marked emulated, and the footer."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from tests.bench.report_plot import footer_emulated
from tests.bench.report_vm import (
    find_report,
    merge,
    option_values,
    qemu_command,
    release_of,
    unfinished,
    vm_command,
)

RELEASE = "6.12.95+deb12-amd64"
HOST = {"kernel": "6.18.44-fc-v1045", "cpus": 2}


def vm_report(**extra: object) -> dict:
    return {
        "command": ".venv/bin/python -m tests.bench.report --modes ipvs --no-plot",
        "date": "2026-12-02", "kernel": RELEASE, "cpus": 2, "seconds": 74, "budget_s": 240,
        "limits": {"fds": 4096, "ports": 28232}, "options": {"connects": 100, "rounds": 3},
        "extra_services": 2,
        "results": [
            {"mode": "ipvs", "services": 10, "full_sync_s": 4.9, "cost": 0.9},
            {"mode": "ipvs", "services": 50000, "skipped": "first full sync estimated at 900 s"},
        ],
        **extra,
    }


def args(**kw: object) -> argparse.Namespace:
    base = {"kernel": "6.12", "services": [10, 1000], "connects": 100, "rounds": 3,
            "budget": 240.0, "changes": 20, "wrk_seconds": 2.0, "wrk_rounds": 3,
            "timeout": 2700, "cpus": 2, "memory": 4096}
    return argparse.Namespace(**{**base, **kw})


def test_vm_command_runs_only_ipvs_without_plots_into_the_results_share() -> None:
    cmd = vm_command(args())
    assert cmd[:3] == [".venv/bin/python", "-m", "tests.bench.report"]
    assert cmd[cmd.index("--modes") + 1] == "ipvs" and "--no-plot" in cmd
    assert cmd[cmd.index("--services") + 1:cmd.index("--connects")] == ["10", "1000"]
    assert cmd[cmd.index("--budget") + 1] == "240"
    assert cmd[cmd.index("--out") + 1] == "/run/pyagent-vm/bench"


def test_qemu_command_passes_the_vm_options_and_one_shell_command(tmp_path: Path) -> None:
    inner = vm_command(args())
    cmd = qemu_command(args(kernel="5.10", memory=3072), tmp_path, inner)
    assert cmd[0] == "vagrant/qemu-run"
    assert cmd[cmd.index("--kernel") + 1] == "5.10"
    assert cmd[cmd.index("--results-dir") + 1] == str(tmp_path)
    assert cmd[cmd.index("--memory") + 1] == "3072" and cmd[cmd.index("--cpus") + 1] == "2"
    assert shlex.split(cmd[cmd.index("--exec") + 1]) == inner
    assert "--accel" not in cmd and "kvm" not in " ".join(cmd)  # TCG: emulated by design


def test_find_report_wants_exactly_one_vm_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="0 report.json"):
        find_report(tmp_path)
    run = tmp_path / f"{RELEASE}-20261202-055424-abc"
    (run / "bench").mkdir(parents=True)
    (run / "console.log").write_text("")
    with pytest.raises(FileNotFoundError, match="console.log"):
        find_report(tmp_path)
    (run / "bench" / "report.json").write_text("{}")
    (run / "release").write_text(RELEASE + "\n")
    assert find_report(tmp_path) == run / "bench" / "report.json"
    assert release_of(find_report(tmp_path)) == RELEASE


def test_merge_marks_every_row_emulated_and_records_vm_and_host() -> None:
    out = merge(vm_report(), command=".venv/bin/python -m tests.bench.report_vm",
                release=RELEASE, cpus=2, memory_mib=4096, host=HOST)
    assert out["emulated"] is True
    assert out["label"] == f"emulated (qemu TCG, kernel {RELEASE})"
    assert out["command"] == ".venv/bin/python -m tests.bench.report_vm"
    assert out["vm_command"].startswith(".venv/bin/python -m tests.bench.report --modes ipvs")
    assert out["vm"] == {"accel": "tcg", "kernel": RELEASE, "cpus": 2, "memory_mib": 4096}
    assert out["host"] == HOST and out["kernel"] == RELEASE
    assert out["options"] == {"connects": 100, "rounds": 3} and out["budget_s"] == 240
    assert [r["services"] for r in out["results"]] == [10, 50000]
    assert all(r["emulated"] for r in out["results"])
    assert out["results"][0]["full_sync_s"] == 4.9 and "vm_note" not in out
    json.dumps(out)  # ipvs.json


def test_merge_keeps_only_ipvs_rows_and_the_note_of_a_cut_run() -> None:
    rep = vm_report(incomplete=True)
    rep["results"].append({"mode": "ebpf", "services": 10, "cost": 1.0})
    out = merge(rep, command="c", release=RELEASE, cpus=2, memory_mib=4096, host=HOST,
                note="qemu-run exited 1")
    assert {r["mode"] for r in out["results"]} == {"ipvs"}
    assert out["incomplete"] is True and out["vm_note"] == "qemu-run exited 1"


def test_merge_refuses_a_report_without_ipvs_rows_or_from_another_kernel() -> None:
    rep = vm_report()
    rep["results"] = [{"mode": "ebpf", "services": 10}]
    with pytest.raises(ValueError, match="no ipvs rows"):
        merge(rep, command="c", release=RELEASE, cpus=2, memory_mib=4096, host=HOST)
    with pytest.raises(ValueError, match="booted 6.1.0-40-amd64"):
        merge(vm_report(), command="c", release="6.1.0-40-amd64", cpus=2, memory_mib=4096,
              host=HOST)


def test_footer_names_the_emulation_the_vm_the_host_and_both_commands() -> None:
    meta = merge(vm_report(), command=".venv/bin/python -m tests.bench.report_vm --kernel 6.12",
                 release=RELEASE, cpus=2, memory_mib=4096, host=HOST, note="qemu-run exited 1")
    lines = footer_emulated(meta).splitlines()
    assert lines[0].startswith(".venv/bin/python -m tests.bench.report_vm --kernel 6.12   |")
    assert "qemu TCG (emulated, no KVM)" in lines[0] and f"Linux {RELEASE}" in lines[0]
    assert "2 vCPUs, 4096 MiB" in lines[0] and "host Linux 6.18.44-fc-v1045" in lines[0]
    assert lines[1] == "in the VM: " + meta["vm_command"]
    assert lines[2] == "VM: qemu-run exited 1"
    assert lines[3].startswith("not run: ipvs 50,000: first full sync estimated")


def test_option_values_read_a_command_line() -> None:
    cmd = ("vagrant/qemu-run --kernel 6.12 --timeout 1800 --exec "
           "'.venv/bin/python -m tests.bench.report --services 10 1000 10000 --connects 100'")
    assert option_values(cmd, "--timeout") == ["1800"]
    assert option_values(cmd, "--cpus") == []
    inner = option_values(cmd, "--exec")[0]
    assert option_values(inner, "--services") == ["10", "1000", "10000"]


def test_unfinished_points_of_a_stopped_vm_get_a_row_saying_so() -> None:
    rep = vm_report(incomplete=True,
                    command=".venv/bin/python -m tests.bench.report --modes ipvs "
                            "--services 10 1000 10000 --out /run/pyagent-vm/bench")
    rep["results"] = rep["results"][:1]  # 10 measured; 1,000 and 10,000 never written
    meta = merge(rep, command="c", release=RELEASE, cpus=2, memory_mib=4096, host=HOST)
    unfinished(meta, "the VM stopped (qemu-run --timeout 1800 s)")
    assert [(r["services"], r.get("error")) for r in meta["results"]] == [
        (10, None),
        (1000, "not measured: the VM stopped (qemu-run --timeout 1800 s)"),
        (10000, "not measured: the VM stopped (qemu-run --timeout 1800 s)")]
    assert all(r["emulated"] for r in meta["results"])
    unfinished(meta, "again")  # idempotent
    assert len(meta["results"]) == 3
