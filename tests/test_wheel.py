"""The package as a user installs it: a wheel built from this tree, installed
into a fresh venv (system site packages, for Debian's BCC), run from that venv
outside the checkout and without PYAGENT_BPF_SRC, balances a real connection
through a ClusterIP in the namespace lab. (The wheel used to leave bpf_src/
out: `Could not find file .../site-packages/bpf_src/sock_lb.c`.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from pyagent.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
VIP = "10.96.0.10"


def test_wheel_installs_and_serves(tmp_path: Path) -> None:
    # From a clean copy of the tree: a build/ left in the checkout would be reused.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".cache", ".vagrant"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(src)], check=True, capture_output=True,
                   cwd=tmp_path, timeout=600)
    (wheel,) = dist.glob("pyagent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for src in ("pyagent/bpf_src/sock_lb.c", "pyagent/bpf_src/tc_nat.c",
                "pyagent/bpf_src/lb_types.h", "pyagent/bpf_src/lib/maps.h"):
        assert src in names, src
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYAGENT_BPF_SRC", "PYTHONPATH")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "from pyagent.dataplanes.ebpf import socket_lb as p; "
                            "print(p.BPF_SRC_DIR)"],
                           capture_output=True, text=True, env=env, cwd="/", check=True)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    version = subprocess.run([str(venv / "bin" / "pyagent"), "--version"], capture_output=True,
                             text=True, env=env, cwd="/", check=True)
    assert version.stdout.startswith("pyagent 0.1.0")

    with Lab(pods=2) as lab:
        mdir = lab.tmp / "m"
        mdir.mkdir()
        (mdir / "all.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "namespace": "d"},
             "spec": {"clusterIP": VIP, "ports": [{"name": "h", "port": 80, "targetPort": 8080,
                                                   "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "addressType": "IPv4",
             "metadata": {"name": "w-1", "namespace": "d",
                          "labels": {"kubernetes.io/service-name": "w"}},
             "ports": [{"name": "h", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": [p.ip4]} for p in lab.pods]}]))
        bpffs = str(lab.bpffs / "pyagent")
        log = lab.tmp / "agent.log"
        agent = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{lab.node_ns}", str(venv / "bin" / "pyagent"), "run",
             "--manifests", str(mdir), "--node-name", "n1", "--cgroup", str(lab.cgroup),
             "--bpffs", bpffs, "--healthz-bind-address", "127.0.0.1:0",
             "--metrics-bind-address", "127.0.0.1:0"],
            stderr=log.open("w"), env=env, cwd="/")
        try:
            deadline = time.monotonic() + 120
            res = None
            while time.monotonic() < deadline:
                assert agent.poll() is None, log.read_text()[-3000:]
                res = lab.client(VIP, 80, count=20, timeout=0.5)
                if res.total == 20:
                    break
                time.sleep(0.5)
            assert res is not None and res.total == 20, (res, log.read_text()[-3000:])
            assert set(res.counts) == {p.name for p in lab.pods}, res
        finally:
            agent.terminate()
            agent.wait(timeout=20)
            subprocess.run([str(venv / "bin" / "pyagent"), "cleanup", "--bpffs", bpffs,
                            "--cgroup", str(lab.cgroup)], capture_output=True, env=env, cwd="/",
                           timeout=60)
    shutil.rmtree(venv, ignore_errors=True)
