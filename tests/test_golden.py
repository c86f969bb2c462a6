"""Golden tests: manifests in, `pyagent maps dump --json` out.

Each directory under tests/golden/ is one case (as Cilium's script tests):
`manifests/` is what `pyagent run --manifests` reads, `expected.json` the
normalised dump of the maps after the agent's first sync, and `args` (one
flag per line, optional) extra flags for `pyagent run`. The agent runs for
real in a namespace lab (its own netns, cgroup and bpffs) with node IP
10.244.0.1 and TC on the lab's bridge.

Normalisation (so the comparison does not depend on allocation order): the
bpffs path goes; backend ids are renumbered 1.. in (address, port,
protocol) order and rev-NAT ids 1.. in (address, port, then the first
frontend's port, protocol and scope) order, everywhere they appear.

To regenerate after an intended change: PYAGENT_GOLDEN_UPDATE=1 pytest
tests/test_golden.py, then review `git diff tests/golden`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyagent.lab import Lab

pytestmark = pytest.mark.root

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "manifests").is_dir())
UPDATE = os.environ.get("PYAGENT_GOLDEN_UPDATE") == "1"
NODE_FLAGS = ["--node-name", "node-1", "--node-ip", "10.244.0.1", "--interface", "br0"]


def _addr(ip: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    a = ipaddress.ip_address(ip)
    return (a.version, a)


def normalise(dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` without what depends on paths or on the order ids were allocated."""
    out = json.loads(json.dumps(dump))
    out.pop("bpffs", None)
    backends = sorted(out["backends"], key=lambda b: (_addr(b["address"]), b["port"],
                                                      b["protocol"], b["id"]))
    bid = {b["id"]: i for i, b in enumerate(backends, 1)}
    for b in backends:
        b["id"] = bid[b["id"]]
    out["backends"] = backends
    first_use: dict[int, tuple] = {}
    for s in out["services"]:  # already in frontend order (`maps dump` sorts them)
        fe = s["frontend"]
        first_use.setdefault(s["revNatId"], (fe["port"], fe["protocol"], fe["scope"]))
    revnat = sorted(out["revNat"], key=lambda r: (_addr(r["address"]), r["port"],
                                                  first_use.get(r["id"], ()), r["id"]))
    rid = {r["id"]: i for i, r in enumerate(revnat, 1)}
    for r in revnat:
        r["id"] = rid[r["id"]]
    out["revNat"] = revnat
    for s in out["services"]:
        s["revNatId"] = rid.get(s["revNatId"], s["revNatId"])
        for slot in s["backends"]:
            if slot["backendId"] is not None:
                slot["backendId"] = bid.get(slot["backendId"], slot["backendId"])
    return out


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(pods=0) as lab:
        yield lab


def _first_sync(lab: Lab, case: str) -> dict[str, Any]:
    """Run the agent on the case's manifests until its first sync; the dump."""
    from pyagent.observe import statusfile

    src = GOLDEN / case
    bpffs = str(lab.bpffs / case)
    manifests = lab.tmp / case
    shutil.copytree(src / "manifests", manifests)
    extra = (src / "args").read_text().split() if (src / "args").is_file() else []
    log = lab.tmp / f"{case}.log"
    proc = lab.agent(["run", "--manifests", str(manifests), *NODE_FLAGS, "--cgroup",
                      str(lab.cgroup), "--bpffs", bpffs, "--healthz-bind-address", "127.0.0.1:0",
                      "--metrics-bind-address", "", *extra],
                     stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        deadline = time.monotonic() + 60 * float(os.environ.get("PYAGENT_TIMEOUT_SCALE", "1"))
        while not (statusfile.read(bpffs) or {}).get("lastSync"):
            assert proc.poll() is None, f"agent exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no sync:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        res = subprocess.run([sys.executable, "-m", "pyagent", "maps", "dump", "--bpffs",
                              bpffs, "--json"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        subprocess.run([sys.executable, "-m", "pyagent", "cleanup", "--bpffs", bpffs,
                        "--cgroup", str(lab.cgroup), "--interface", "br0"],
                       capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("case", CASES)
def test_golden(lab: Lab, case: str) -> None:
    got = normalise(_first_sync(lab, case))
    expected = GOLDEN / case / "expected.json"
    if UPDATE or not expected.exists():
        expected.write_text(json.dumps(got, indent=2) + "\n")
        if not UPDATE:
            pytest.fail(f"{expected} did not exist: written, review and commit it")
    assert got == json.loads(expected.read_text()), (
        f"{case}: the maps differ from {expected} (PYAGENT_GOLDEN_UPDATE=1 regenerates)")


def test_normalise_renumbers_ids_consistently() -> None:
    dump = {"bpffs": "/x", "services": [
        {"frontend": {"address": "10.0.0.1", "port": 80, "protocol": "TCP", "scope": "internal"},
         "revNatId": 7, "backends": [{"slot": 1, "backendId": 9}, {"slot": 2, "backendId": 4}]}],
        "backends": [{"id": 9, "address": "10.1.0.2", "port": 80, "protocol": "TCP"},
                     {"id": 4, "address": "10.1.0.10", "port": 80, "protocol": "TCP"}],
        "revNat": [{"id": 7, "address": "10.0.0.1", "port": 80}]}
    out = normalise(dump)
    assert "bpffs" not in out
    assert [b["id"] for b in out["backends"]] == [1, 2]  # 10.1.0.2 < 10.1.0.10
    assert [s["backendId"] for s in out["services"][0]["backends"]] == [1, 2]
    assert out["services"][0]["revNatId"] == 1 and out["revNat"][0]["id"] == 1
