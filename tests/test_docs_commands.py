"""Every command of docs/install.md, docs/migrate.md and docs/troubleshoot.md
(their ```sh blocks), run in the namespace lab against a running agent.

The lab stands in for a node: the agent runs in its node namespace with the
production ports (10256, 10249), and the node's paths are mapped onto the
lab's (/sys/fs/bpf/pyagent, /run/pyagent/cgroupv2, eth0). A command that
calls `kubectl` or `podman` needs a cluster or a container runtime: it is
listed, not run (the manifests they apply are checked by test_deploy.py and
run by test_daemonset.py). Every other command must succeed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kube_proxy_inputs import KUBEADM_CONFIG_CONF
from test_migrate import KUBE_PROXY_FILTER, KUBE_PROXY_NAT, KUBE_PROXY_NFT, restore_text

from pyagent.lab import Lab

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("install.md", "troubleshoot.md", "migrate.md")  # migrate's cleanup last
CLUSTER_ONLY = ("kubectl", "podman")
VIP = "10.96.0.10"
# pyagent sub-commands that read the agent's pins: the lab's bpffs is added
NEEDS_BPFFS = ("status", "services list", "maps dump", "monitor")


def commands(doc: str) -> list[str]:
    """The command lines of a document's sh blocks (continuations joined)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S):
        text = block.replace("\\\n", " ")
        out += [line.strip() for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    return out


def cluster_only(cmd: str) -> bool:
    return any(w in CLUSTER_ONLY for w in re.split(r"[\s|&;()]+", cmd))


def manifests() -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
         "status": {"addresses": [{"type": "InternalIP", "address": "10.244.0.1"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
         "spec": {"clusterIP": VIP, "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                                "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": "web-1", "namespace": "d",
                      "labels": {"kubernetes.io/service-name": "web"}},
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [f"10.244.0.{10 + i}"], "nodeName": "node-1"}
                       for i in range(2)]}]


def test_every_documented_command_runs(tmp_path: Path) -> None:
    docs = {doc: commands(doc) for doc in DOCS}
    assert all(docs.values()), docs
    with Lab(pods=2) as lab:
        lab.enable_routing()
        bpffs, cgroup = str(lab.bpffs / "pyagent"), str(lab.cgroup)
        uplink = f"v{lab.id}0"[:15]
        work = tmp_path / "work"
        (work / "snapshot").mkdir(parents=True)
        (work / "snapshot" / "cluster.yaml").write_text(yaml.safe_dump_all(manifests()))
        (work / "config.conf").write_text(KUBEADM_CONFIG_CONF)
        mdir = tmp_path / "m"
        mdir.mkdir()
        (mdir / "all.yaml").write_text(yaml.safe_dump_all(manifests()))
        log = tmp_path / "agent.log"
        agent = lab.agent(["run", "--manifests", str(mdir), "--node-name", "node-1",
                           "--cgroup", cgroup, "--bpffs", bpffs, "--interface", uplink],
                          stderr=log.open("w"))
        ns = ["nsenter", f"--net=/run/netns/{lab.node_ns}"]
        try:
            deadline = time.monotonic() + 90
            while lab.client(VIP, 80, count=2, timeout=0.5).total != 2:
                assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            # what kube-proxy would have left, for migrate.md's cleanup commands
            subprocess.run([*ns, "iptables-nft-restore"], text=True, check=True,
                           input=restore_text({"nat": KUBE_PROXY_NAT,
                                               "filter": KUBE_PROXY_FILTER}))
            subprocess.run([*ns, "nft", "-f", "-"], input=KUBE_PROXY_NFT, text=True,
                           check=True)
            env_path = f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
            failures, skipped, ran = [], [], []
            for doc, cmds in docs.items():
                for cmd in cmds:
                    if cluster_only(cmd):
                        skipped.append(cmd)
                        continue
                    if doc == "migrate.md" and "cleanup --bpffs" in cmd:
                        agent.terminate()  # rolling back: the agent is gone first
                        agent.wait(timeout=20)
                    run = lab_command(cmd, bpffs, cgroup, uplink)
                    res = subprocess.run([*ns, "sh", "-c", run], cwd=work, capture_output=True,
                                         text=True, timeout=180, env={"PATH": env_path})
                    ran.append((doc, cmd))
                    if res.returncode != 0:
                        failures.append(f"{doc}: {cmd}\n  ran: {run}\n  rc={res.returncode}\n"
                                        f"  {res.stdout[-800:]}{res.stderr[-800:]}")
            assert not failures, "\n".join(failures) + "\n" + log.read_text()[-2000:]
            assert ran and skipped
            assert all(cmd.split()[0] in ("pyagent", "curl", "bpftool", "iptables-save", "nft",
                                          "conntrack", "printf", "sed") for _, cmd in ran), ran
            print("not run (cluster or container runtime):\n  " + "\n  ".join(skipped))
            # migrate.md's commands did what it says
            left = subprocess.run([*ns, "iptables-save"], capture_output=True, text=True).stdout
            assert "KUBE-SERVICES" not in left and "PYAGENT" not in left, left
            assert "kube-proxy" not in subprocess.run([*ns, "nft", "list", "tables"],
                                                      capture_output=True, text=True).stdout
            effective = (work / "effective.yaml").read_text()
            assert "kubeconfig: /var/lib/kube-proxy/kubeconfig.conf" in effective
        finally:
            if agent.poll() is None:
                agent.terminate()
                agent.wait(timeout=20)
            lab.agent(["cleanup", "--bpffs", bpffs, "--cgroup", cgroup, "--interface", uplink],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=60)


def lab_command(cmd: str, bpffs: str, cgroup: str, uplink: str) -> str:
    """The node's paths as the lab has them."""
    out = (cmd.replace("/sys/fs/bpf/pyagent", bpffs).replace("/run/pyagent/cgroupv2", cgroup)
           .replace("dev eth0", f"dev {uplink}").replace("--interface eth0",
                                                         f"--interface {uplink}"))
    parts = out.split(" | ")
    words = shlex.split(parts[0])
    if words[0] == "pyagent" and "--bpffs" not in words:
        for sub in NEEDS_BPFFS:
            n = len(sub.split())
            if " ".join(words[1:1 + n]) == sub:
                extra = ["--bpffs", bpffs] + (["--cgroup", cgroup] if sub == "status" else [])
                words = words[:1 + n] + extra + words[1 + n:]
        parts[0] = shlex.join(words)
    return " | ".join(parts)


def test_kube_proxy_doc_names_every_key_and_flag() -> None:
    from pyagent.cli import kubeproxy_flags as KP
    from pyagent.core.config import IGNORED

    doc = (ROOT / "docs" / "kube-proxy.md").read_text()
    for key in IGNORED:
        if key not in ("masqueradeMark", "windows", "linux.conntrack", "logging.options"):
            assert f"`{key}" in doc, key
    for flag in (*KP.HONOURED, *KP.IGNORED_FLAGS):
        assert f"`--{flag}`" in doc or (flag == "v" and "`--v`" in doc), flag
