"""The DaemonSet's real command lines (parsed from deploy/kubernetes/*.yaml)
in namespaces that imitate a node and its pods, without a container runtime:

- the node ("host"): a test cgroup acting as the host's root cgroup, and a
  process with its own cgroup and mount namespaces in it acting as the
  host's PID 1 (its /run a private tmpfs, / shared as on systemd hosts);
- each container: a process in its own child cgroup of the host's, with its
  own cgroup namespace and a mount namespace copied from the host's, its
  hostPath volumes at the same paths with the manifest's propagation
  (Bidirectional: shared with the host; HostToContainer: a slave), the
  ConfigMap at /etc/pyagent and a service account, in the lab's node network
  namespace (hostNetwork), talking to tests/kubeapi.py over TLS;
- HOST_INIT (the manifest's /hostproc/1) points at the fake PID 1, and
  PYAGENT_HOST_MODULES is cleared (here the container's files are the
  machine's own: nothing may be linked into its /lib/modules).

Then a process in a *sibling* cgroup (another pod's, not the agent's)
connects to a ClusterIP. With the manifest's init container (the host's
cgroup2 root mounted from the host's cgroup and mount namespaces) the socket
hooks translate it; with the old manifest's init command (cgroup2 mounted
from the pod's own cgroup namespace) they do not: the mount's root was the
init container's own cgroup.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pyagent.lab import Lab
from pyagent.lab.single_node import join_cgroup

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
DEPLOY = ROOT / "deploy" / "kubernetes"
VIP = "10.96.0.10"
NODE = "node-a"
# The old manifest's init command (mount point created, else it fails with
# "mount point does not exist"), as it ran in the pod's own namespaces.
OLD_INIT = ["sh", "-c", "mkdir -p /run/pyagent/cgroupv2 && (mountpoint -q /run/pyagent/cgroupv2"
            " || mount -t cgroup2 none /run/pyagent/cgroupv2)"]


def manifests() -> tuple[dict, dict]:
    docs = [d for p in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    return ds, cm


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a container's command ($$ escapes)."""
    def one(text: str) -> str:
        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                      lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                      text)
    return [one(a) for a in args]


class Cgroups:
    """Child cgroups of the fake host's root, removed deepest first."""

    def __init__(self, root: Path) -> None:
        self.root, self.made = root, [root]
        root.mkdir()

    def make(self, rel: str) -> Path:
        path = self.root / rel
        for parent in [*reversed(Path(rel).parents[:-1]), Path(rel)]:
            p = self.root / parent
            if not p.exists():
                p.mkdir()
                self.made.append(p)
        return path

    def close(self) -> None:
        for cg in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                (cg / "cgroup.kill").write_text("1")
            for _ in range(100):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


class FakeNode:
    """The host: root cgroup, PID 1 (own cgroup + mount namespaces), network."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.cgroups = Cgroups(lab.cgroup / name)
        self.tmp = lab.tmp / name
        self.tmp.mkdir()
        self.procs: list[subprocess.Popen] = []
        # The host's own /run, with what kubelet makes for the hostPath volumes
        # (DirectoryOrCreate / FileOrCreate); the volumes' sources shared, as
        # everything is on a systemd host (what hostPath propagation needs).
        setup = ("mount -t tmpfs tmpfs /run && "
                 "mkdir -p /run/pyagent && touch /run/xtables.lock && "
                 "mount --bind /run/pyagent /run/pyagent && mount --make-shared /run/pyagent && "
                 "mount --bind /sys/fs/bpf /sys/fs/bpf && mount --make-shared /sys/fs/bpf && "
                 "echo $$ && exec sleep 3600")
        init = subprocess.Popen(["unshare", "--cgroup", "--mount", "--propagation", "private",
                                 "--fork", "sh", "-c", setup], stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: join_cgroup(self.cgroups.root))
        self.procs.append(init)
        assert init.stdout is not None
        self.pid1 = int(init.stdout.readline())
        self.init_dir = f"/proc/{self.pid1}"

    def host_path(self, path: str) -> Path:
        """`path` as the host sees it (through its PID 1's root)."""
        return Path(f"{self.init_dir}/root{path}")

    def container(self, pod: str, name: str, command: list[str], env: dict[str, str],
                  mounts: list[dict], files: dict[str, str], **kw) -> subprocess.Popen:
        """One container of a pod: cgroup <pod>/<name> under the host's root,
        own cgroup namespace, a copy of the host's mount namespace, the node's
        network namespace."""
        cg = self.cgroups.make(f"{pod}/{name}")
        steps = []
        for m in mounts:  # HostToContainer: the container's copy receives, never sends
            if (m["mountPath"] in ("/run/pyagent", "/sys/fs/bpf")
                    and m.get("mountPropagation") != "Bidirectional"):
                steps.append(f"mount --make-rslave {m['mountPath']}")
        stage = self.tmp / f"{pod}-{name}"
        (stage / "upper").mkdir(parents=True)
        (stage / "work").mkdir()
        (stage / "files").mkdir()
        # ConfigMap and service account files: /etc through an overlay (the
        # container's root file system is the machine's here), /run is the host's.
        steps.append(f"mount -t overlay overlay -o lowerdir=/etc,upperdir={stage}/upper,"
                     f"workdir={stage}/work /etc")
        for i, (path, text) in enumerate(files.items()):
            (stage / "files" / str(i)).write_text(text)
            steps.append(f"mkdir -p {Path(path).parent} && cp {stage}/files/{i} {path}")
        script = " && ".join(steps) + ' && exec "$@"'
        netns = f"/run/netns/{self.lab.node_ns}"
        argv = ["nsenter", f"--net={netns}", f"--mount={self.init_dir}/ns/mnt", "--",
                "unshare", "--cgroup", "--mount", "--propagation", "unchanged", "--",
                "sh", "-c", script, "sh", *command]
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        proc = subprocess.Popen(argv, env={**clean_env, **env},
                                preexec_fn=lambda: join_cgroup(cg), **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        self.cgroups.close()


class ApiServer:
    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(HERE / "kubeapi.py"), "serve",
             "--tls"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        assert ready[0] == "ready", ready
        self.port, self.ca = ready[1], Path(ready[2]).read_text()

    def create(self, obj: dict) -> None:
        import json

        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": "create", "obj": obj}) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, ApiServer]]:
    with Lab(pods=2) as lab:
        api = ApiServer(lab.node_ns)
        try:
            api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
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


def pod_spec() -> dict:
    return manifests()[0]["spec"]["template"]["spec"]


def container_env(c: dict, node: FakeNode, api: ApiServer) -> dict[str, str]:
    """The container's env as kubelet sets it, with the test's parameters."""
    out = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": api.port}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            out[e["name"]] = NODE
    out["HOST_INIT"] = node.init_dir  # the manifest's /hostproc/1
    if "PYAGENT_HOST_MODULES" in out:
        out["PYAGENT_HOST_MODULES"] = ""  # see the module docstring
    return out


def command(c: dict, env: dict[str, str]) -> list[str]:
    argv = expand(list(c["command"]), env)
    return [sys.executable, "-m", "pyagent", *argv[1:]] if argv[0] == "pyagent" else argv


def files(api: ApiServer) -> dict[str, str]:
    cm = manifests()[1]
    sa = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run is /run
    return {"/etc/pyagent/config.yaml": cm["data"]["config.yaml"], f"{sa}/token": "sa-token",
            f"{sa}/ca.crt": api.ca}


def start_agent(node: FakeNode, api: ApiServer, pod: str, log: Path) -> subprocess.Popen:
    agent = next(c for c in pod_spec()["containers"] if c["name"] == "pyagent")
    env = container_env(agent, node, api)
    return node.container(pod, "pyagent", command(agent, env), env, agent["volumeMounts"],
                          files(api), stderr=log.open("w"))


def wait_running(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text()
        assert proc.poll() is None, f"agent exited:\n{text[-4000:]}"
        if "full sync of" in text:
            return
        time.sleep(0.3)
    raise AssertionError(f"agent did not sync:\n{log.read_text()[-4000:]}")


def sibling_client(node: FakeNode, lab: Lab, count: int = 20) -> dict:
    """The lab client in another pod's cgroup (a sibling of the agent's)."""
    import json

    cg = node.cgroups.make("other-pod/app")
    res = subprocess.run(["ip", "netns", "exec", lab.node_ns, sys.executable, "-m",
                          "pyagent.lab.client", "--dst", VIP, "--port", "80", "--count",
                          str(count), "--timeout", "1"], capture_output=True, text=True,
                         preexec_fn=lambda: join_cgroup(cg), timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def cleanup(node: FakeNode, api: ApiServer, pod: str) -> None:
    agent = next(c for c in pod_spec()["containers"] if c["name"] == "pyagent")
    env = container_env(agent, node, api)
    node.container(pod, "cleanup", [sys.executable, "-m", "pyagent", "cleanup", "--bpffs",
                                    "/sys/fs/bpf/pyagent", "--cgroup", "/run/pyagent/cgroupv2"],
                   env, agent["volumeMounts"], {}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL).wait(timeout=60)


def test_init_container_mounts_the_hosts_cgroup_root(env: tuple[Lab, ApiServer]) -> None:
    lab, api = env
    node = FakeNode(lab, "node-new")
    try:
        init = next(c for c in pod_spec()["initContainers"] if c["name"] == "mount-host")
        ienv = container_env(init, node, api)
        res = node.container("agent-pod", "mount-host", command(init, ienv), ienv,
                             init["volumeMounts"], {}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        out, err = res.communicate(timeout=60)
        assert res.returncode == 0, (out, err)
        assert "mounted bpf at /sys/fs/bpf" in out and "mounted cgroup2" in out, out
        # On the host: the cgroup2 mount's root is the host's root cgroup (its
        # PID 1 is right there), and the bpffs reached it (Bidirectional).
        procs = node.host_path("/run/pyagent/cgroupv2/cgroup.procs").read_text().split()
        assert str(node.pid1) in procs
        assert node.host_path("/run/pyagent/cgroupv2/agent-pod").is_dir()
        host_mounts = [(line.split()[4], line.split(" - ")[1].split()[0])
                       for line in Path(f"{node.init_dir}/mountinfo").read_text().splitlines()]
        assert ("/sys/fs/bpf", "bpf") in host_mounts, host_mounts
        assert ("/run/pyagent/cgroupv2", "cgroup2") in host_mounts
        # a second run (a restarted pod) leaves both as they are
        again = node.container("agent-pod", "mount-host-2", command(init, ienv), ienv,
                               init["volumeMounts"], {}, stdout=subprocess.PIPE, text=True)
        assert "already mounted" in again.communicate(timeout=60)[0]

        log = lab.tmp / "agent-new.log"
        agent = start_agent(node, api, "agent-pod", log)
        try:
            wait_running(agent, log)
            res = sibling_client(node, lab)
            assert res["counts"] and sum(res["counts"].values()) == 20, (res, log.read_text())
            assert set(res["counts"]) == {p.name for p in lab.pods}
            text = log.read_text()
            assert "cgroup=/run/pyagent/cgroupv2" in text
            # the pins are on the host's bpffs, not in the pod
            assert node.host_path("/sys/fs/bpf/pyagent/links").is_dir()
        finally:
            agent.terminate()
            agent.wait(timeout=20)
            cleanup(node, api, "agent-pod")
    finally:
        node.close()


def test_the_old_init_command_would_not_cover_other_pods(env: tuple[Lab, ApiServer]) -> None:
    lab, api = env
    node = FakeNode(lab, "node-old")
    try:
        # The old manifest: the init container mounted cgroup2 in its own
        # namespaces, onto a Bidirectional /run/pyagent.
        res = node.container("agent-pod", "mount-cgroup", OLD_INIT, {},
                             [{"mountPath": "/run/pyagent", "mountPropagation": "Bidirectional"},
                              {"mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"}],
                             {}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert res.wait(timeout=60) == 0, res.communicate()
        # what the host got: a cgroup2 mount whose root is that init
        # container's own (now empty) cgroup, not the host's
        root = node.host_path("/run/pyagent/cgroupv2")
        assert not (root / "agent-pod").exists() and not (root / "init").exists()
        assert (root / "cgroup.procs").read_text().split() == []
        # (a bpffs, as the new init container makes: the old manifest had none,
        # and the agent cannot make one in the pod's /sys/fs/bpf)
        node.container("agent-pod", "bpffs", [sys.executable, "-m", "pyagent", "mount-host",
                                              "--host-init", node.init_dir, "--cgroup2", ""],
                       {}, [{"mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"}],
                       {}, stdout=subprocess.DEVNULL).wait(timeout=60)
        log = lab.tmp / "agent-old.log"
        agent = start_agent(node, api, "agent-pod", log)
        try:
            wait_running(agent, log)
            res = sibling_client(node, lab, count=5)
            assert sum(res["counts"].values()) == 0, res  # not translated: no route to the VIP
        finally:
            agent.terminate()
            agent.wait(timeout=20)
            cleanup(node, api, "agent-pod")
    finally:
        node.close()
