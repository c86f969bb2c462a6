"""`pyagent trace --bpf` on the socket path: a real connect() from the
agent's cgroup, answered by the kernel's hooks (DNAT to the backend they
chose, REJECT, DROP, NO_MATCH); and clear errors for a datapath that is not
loaded. Runs in a namespace lab: the trace's connect() happens inside the
lab's node namespace, so no packet leaves it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from agentlab import VERDICT_VIPS, verdict_lab

pytestmark = pytest.mark.root

VIP, EMPTY, REMOTE = VERDICT_VIPS


def test_socket_path_verdicts_and_not_loaded_errors() -> None:
    from pyagent.dataplanes.ebpf import socket_lb

    with verdict_lab() as a:
        pods = a.lab.pods

        def trace(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["nsenter", f"--net=/run/netns/{a.lab.node_ns}", sys.executable, "-m",
                 "pyagent", "trace", "--bpf", "--bpffs", a.bpffs, *args],
                capture_output=True, text=True, timeout=60)

        def verdict(dst: str) -> dict:
            r = trace("--dst", dst, "--dport", "80", "--json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        backends = {f"{p.ip4}:8080" for p in pods}
        seen = set()
        for _ in range(12):
            res = verdict(VIP)
            assert res["verdict"] == "DNAT" and res["path"] == "socket", res
            assert res["cgroup"] == str(a.lab.cgroup)
            seen.add(res["endpoint"])
        assert seen <= backends and len(seen) > 1  # the hooks' own random pick
        assert verdict(EMPTY)["verdict"] == ("REJECT" if socket_lb.kernel_variant().features
                                             .set_retval else "REJECT_OR_DROP")
        assert verdict(REMOTE)["verdict"] in ("DROP", "REJECT_OR_DROP")
        assert verdict("10.96.9.9")["verdict"] == "NO_MATCH"
        text = trace("--dst", VIP, "--dport", "80")
        assert text.returncode == 0 and text.stdout.startswith("DNAT -> 10.244.0.")

        # this agent runs without --interface: the TC path is not loaded
        r = trace("--src", "203.0.113.9", "--dst", VIP, "--dport", "80")
        assert r.returncode == 1
        assert "TC datapath is not loaded" in r.stderr and "Traceback" not in r.stderr
        r = trace("--bpffs", str(a.lab.tmp / "nothing"), "--dst", VIP, "--dport", "80")
        assert r.returncode == 1 and "socket datapath is not loaded" in r.stderr
