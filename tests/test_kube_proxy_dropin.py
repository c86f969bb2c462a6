"""pyagent in kube-proxy's place, fed what a kube-proxy DaemonSet is fed:

- kubeadm: its ConfigMap's config.conf, verbatim, at /var/lib/kube-proxy/
  (with a kubeconfig.conf beside it, as kubeadm's ConfigMap has), and its
  command line `--config=/var/lib/kube-proxy/config.conf --hostname-override=...`;
- kube-up: its command line (--master, --kubeconfig, --cluster-cidr,
  --oom-score-adj, --v, --feature-gates, the four sync-period flags,
  --detect-local-mode=NodeCIDR, --proxy-mode).

The API server is tests/kubeapi.py, run inside the lab's node namespace; the
agent runs in a private mount namespace whose /var/lib is an overlay, so the
files sit at kube-proxy's paths without touching the host's /var/lib.
Only pyagent's lab flags are added (cgroup, bpffs, health ports on 127.0.0.1).

Before: the kubeadm file's clientConnection.kubeconfig was ignored (the agent
died with `ConfigException: Service host/port is not set`), and kube-up's
command line was rejected (`unrecognized arguments`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kube_proxy_inputs import KUBEADM_CONFIG_CONF, KUBEADM_DAEMONSET_ARGS, kube_up_args

from pyagent.lab import Lab

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
VIP = "10.96.0.10"
NODE = "node-a"


class ApiInNetns:
    """tests/kubeapi.py in its own process inside a network namespace."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(HERE / "kubeapi.py"), "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        self.url = f"http://127.0.0.1:{ready[1]}"

    def create(self, obj: dict) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": "create", "obj": obj}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == "ok", answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def kubeconfig(server: str) -> str:
    """A kubeconfig shaped as kubeadm's kubeconfig.conf (the token is ours)."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default", "cluster": {"server": server}}],
        "contexts": [{"name": "default", "context": {"cluster": "default",
                                                     "namespace": "default",
                                                     "user": "default"}}],
        "current-context": "default",
        "users": [{"name": "default", "user": {"tokenFile": "/var/lib/kube-proxy/token"}}]})


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, ApiInNetns]]:
    with Lab(pods=2) as lab:
        lab.enable_routing()  # a route to the Service range, as a node's default route is
        api = ApiInNetns(lab.node_ns)
        try:
            api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
                        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
                        "status": {"addresses": [{"type": "InternalIP",
                                                  "address": "10.244.0.1"}]}})
            api.create({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "web", "namespace": "default"},
                        "spec": {"clusterIP": VIP, "clusterIPs": [VIP],
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                            "protocol": "TCP"}]}})
            api.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "web-1", "namespace": "default",
                                     "labels": {"kubernetes.io/service-name": "web"}},
                        "addressType": "IPv4",
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                        "endpoints": [{"addresses": [p.ip4], "nodeName": NODE,
                                       "conditions": {"ready": True}} for p in lab.pods]})
            yield lab, api
        finally:
            api.close()


def start_agent(lab: Lab, files: dict[str, str], args: list[str], log: Path
                ) -> subprocess.Popen:
    """`pyagent run ARGS` in the node namespace, with `files` at
    /var/lib/kube-proxy/ in a private mount namespace (an overlay on /var/lib)."""
    stage = lab.tmp / f"stage-{len(list(lab.tmp.iterdir()))}"
    (stage / "files").mkdir(parents=True)
    for name, text in files.items():
        (stage / "files" / name).write_text(text)
    (stage / "upper").mkdir()
    (stage / "work").mkdir()
    script = (f"mount -t overlay overlay -o lowerdir=/var/lib,upperdir={stage}/upper,"
              f"workdir={stage}/work /var/lib && mkdir -p /var/lib/kube-proxy && "
              f"cp {stage}/files/* /var/lib/kube-proxy/ && "
              f'exec nsenter --net=/run/netns/{lab.node_ns} "$@"')
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
           sys.executable, "-m", "pyagent", "run", *args,
           "--healthz-bind-address", "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"]
    print("agent:", shlex.join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    lab._procs.append(proc)
    return proc


def wait_served(lab: Lab, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"agent exited:\n{log.read_text()[-3000:]}"
        if lab.client(VIP, 80, count=4, timeout=0.5).total == 4:
            return
        time.sleep(0.3)
    rules = lab.node_exec("iptables-save", check=False).stdout
    raise AssertionError(f"{VIP}:80 not served\n{log.read_text()[-3000:]}\n{rules}")


def stop(lab: Lab, proc: subprocess.Popen, cleanup: list[str]) -> None:
    proc.terminate()
    proc.wait(timeout=20)
    lab.agent(["cleanup", *cleanup], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL).wait(timeout=60)


def test_kubeadm_config_map_and_command_line(lab: tuple[Lab, ApiInNetns]) -> None:
    lab_, api = lab
    bpffs = str(lab_.bpffs / "pyagent")
    log = lab_.tmp / "kubeadm.log"
    files = {"config.conf": KUBEADM_CONFIG_CONF, "kubeconfig.conf": kubeconfig(api.url),
             "token": "kubeadm-token"}
    argv = [a.replace("node-a", NODE) for a in KUBEADM_DAEMONSET_ARGS]
    proc = start_agent(lab_, files, [*argv, "--cgroup", str(lab_.cgroup), "--bpffs", bpffs], log)
    try:
        wait_served(lab_, proc, log)
        res = lab_.client(VIP, 80, count=40)
        assert set(res.counts) == {p.name for p in lab_.pods} and res.total == 40, res
        text = log.read_text()
        assert f"API server {api.url} (kubeconfig /var/lib/kube-proxy/kubeconfig.conf)" in text
        assert "mode unset: pyagent's default ebpf" in text
        assert "node IPs: 10.244.0.1" in text  # from the Node object's InternalIP
    finally:
        stop(lab_, proc, ["--bpffs", bpffs, "--cgroup", str(lab_.cgroup)])


def test_kube_up_command_line(lab: tuple[Lab, ApiInNetns]) -> None:
    lab_, api = lab
    log = lab_.tmp / "kube-up.log"
    # kube-up's kubeconfig names a server; --master replaces it, as in kube-proxy.
    files = {"kubeconfig": kubeconfig("https://10.255.255.1:443"), "token": "t"}
    args = [*kube_up_args(api.url, "iptables"), f"--hostname-override={NODE}",
            "--bpffs", str(lab_.bpffs / "pyagent")]
    proc = start_agent(lab_, files, args, log)
    try:
        wait_served(lab_, proc, log)
        text = log.read_text()
        assert f"API server {api.url}" in text
        # --oom-score-adj (lowering it needs CAP_SYS_RESOURCE, which a sandbox may lack)
        if "oom_score_adj set to -998" in text:
            assert Path(f"/proc/{proc.pid}/oom_score_adj").read_text().strip() == "-998"
        else:
            assert "could not set oom_score_adj to -998" in text, text
        # --detect-local-mode=NodeCIDR: pods are the Node's podCIDR, not --cluster-cidr
        assert "local traffic: from the Node's pod CIDRs 10.244.0.0/24 (NodeCIDR)" in text
        rules = lab_.node_exec("iptables-save", "-t", "nat").stdout
        assert "-A PYAGENT-MASQ-NONPOD -s 10.244.0.0/24 -j RETURN" in rules, rules
        assert "10.8.0.0/14" not in rules
        # flags the mode does not read are named (kube-proxy reads --ipvs-* in ipvs mode)
        assert "config: --ipvs-sync-period not used: the mode is iptables" in text
        assert "config: --cluster-cidr not used: detectLocalMode is NodeCIDR" in text
        assert "Traceback" not in text
    finally:
        stop(lab_, proc, ["--mode", "iptables"])
