"""kube-proxy's own inputs, unchanged: kubeadm's default ConfigMap and
DaemonSet command line, kube-up's command line, and kube-proxy's flags and
config keys one by one (what `pyagent run` and `pyagent plan` make of them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kube_proxy_inputs import (
    KUBEADM_CONFIG_CONF,
    KUBEADM_DAEMONSET_ARGS,
    kube_up_args,
)

from pyagent.cli import build_parser
from pyagent.cli import kubeproxy_flags as KP
from pyagent.cli.run import node_config
from pyagent.core.config import IGNORED, config_from_dict, load_config


def run_config(argv: list[str]):
    return node_config(build_parser().parse_args(["run", *argv]))


def test_kubeadm_config_conf_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "config.conf"
    path.write_text(KUBEADM_CONFIG_CONF)
    cfg = load_config(path)
    assert cfg.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"  # was ignored
    assert cfg.cluster_cidrs == ("10.244.0.0/16",)
    assert cfg.local_detect_mode == "ClusterCIDR"
    # zero values mean kube-proxy's defaults
    assert (cfg.sync_period, cfg.min_sync_period) == (30.0, 1.0)
    assert (cfg.healthz_bind_address, cfg.metrics_bind_address) == (
        "0.0.0.0:10256", "127.0.0.1:10249")
    assert cfg.mode == "ebpf" and cfg.node_name == "" and cfg.oom_score_adj is None
    assert cfg.node_port_addresses == () and not cfg.node_port_primary
    assert "mode unset: pyagent's default ebpf (kube-proxy would use iptables)" in cfg.notes
    assert not [n for n in cfg.notes if n.startswith("ignored")]  # all zero: nothing to say


def test_kubeadm_daemonset_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    conf = tmp_path / "config.conf"
    conf.write_text(KUBEADM_CONFIG_CONF)
    argv = [a.replace("/var/lib/kube-proxy/config.conf", str(conf))
            for a in KUBEADM_DAEMONSET_ARGS]
    cfg = run_config(argv)
    assert cfg.node_name == "node-a" and cfg.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"


@pytest.mark.parametrize("proxy_mode", [None, "iptables", "ipvs", "nftables"])
def test_kube_up_command_line(proxy_mode: str | None) -> None:
    cfg = run_config(kube_up_args("https://10.0.0.1", proxy_mode))
    assert cfg.api_server == "https://10.0.0.1"
    assert cfg.kubeconfig == "/var/lib/kube-proxy/kubeconfig"
    assert cfg.oom_score_adj == -998 and cfg.log_verbosity == 2
    assert cfg.feature_gates == {"DynamicKubeletConfig": False,
                                 "RotateKubeletServerCertificate": True,
                                 "ExecProbeTimeout": False}
    assert cfg.mode == (proxy_mode or "ebpf")
    # kube-proxy applies --iptables-* unless the mode is ipvs, --ipvs-* only then
    # (both say 1m / 10s here, so check the notes for which one was read)
    assert (cfg.sync_period, cfg.min_sync_period) == (60.0, 10.0)
    unused = "iptables" if proxy_mode == "ipvs" else "ipvs"
    assert f"--{unused}-sync-period not used: the mode is {cfg.mode}" in cfg.notes
    # NodeCIDR: the pod CIDRs come from the Node at start; --cluster-cidr is not used
    assert cfg.local_detect_mode == "NodeCIDR" and cfg.cluster_cidrs == ()
    assert "--cluster-cidr not used: detectLocalMode is NodeCIDR" in cfg.notes


def test_per_mode_sync_period_flags_pick_the_modes_one() -> None:
    cfg = run_config(["--proxy-mode=ipvs", "--iptables-sync-period=1m",
                      "--ipvs-sync-period=2m", "--ipvs-min-sync-period=0"])
    assert (cfg.sync_period, cfg.min_sync_period) == (120.0, 0.0)
    cfg = run_config(["--proxy-mode=iptables", "--iptables-sync-period=1m",
                      "--ipvs-sync-period=2m"])
    assert cfg.sync_period == 60.0


@pytest.mark.parametrize(("mode", "expected"), [
    ("iptables", (11.0, 2.0)), ("nftables", (13.0, 4.0)), ("ipvs", (12.0, 0.0)),
    ("ebpf", (11.0, 2.0))])
def test_per_mode_sync_periods_in_the_file(mode: str, expected: tuple) -> None:
    data = {"kind": "KubeProxyConfiguration", "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "mode": mode, "iptables": {"syncPeriod": "11s", "minSyncPeriod": "2s"},
            "ipvs": {"syncPeriod": "12s", "minSyncPeriod": "0s"},
            "nftables": {"syncPeriod": "13s", "minSyncPeriod": "4s"}}
    cfg = config_from_dict(data)
    assert (cfg.sync_period, cfg.min_sync_period) == expected
    # a --mode flag picks the block too
    other = "ipvs" if mode != "ipvs" else "nftables"
    flagged = config_from_dict(data, mode=other)
    assert flagged.mode == other and flagged.sync_period != cfg.sync_period


@pytest.mark.parametrize(("data", "error"), [
    ({"kind": "KubeletConfiguration"}, "kind: expected KubeProxyConfiguration"),
    ({"apiVersion": "kubeproxy.config.k8s.io/v1beta1"}, "apiVersion: expected kubeproxy"),
    ({"detectLocalMode": "Pods"}, "detectLocalMode: 'Pods' is not one of"),
    ({"detectLocalMode": "InterfaceNamePrefix"}, "detectLocal.interfaceNamePrefix: required"),
    ({"detectLocalMode": "BridgeInterface", "detectLocal": {"bridgeInterface": ""}},
     "detectLocal.bridgeInterface: required"),
    ({"iptables": {"syncPerod": "1s"}}, "unknown key iptables.'syncPerod'"),
    ({"oomScoreAdj": 5000}, "oomScoreAdj: expected a number in"),
    ({"nodePortAddresses": ["primry"]}, "nodePortAddresses: invalid CIDR 'primry'"),
    ({"bindAddress": "x"}, "bindAddress: invalid IP"),
])
def test_bad_config_is_refused_naming_the_key(data: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(".", r"\.")):
        config_from_dict(data)


def test_wrong_kind_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.yaml"
    path.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
    res = subprocess.run([sys.executable, "-m", "pyagent", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"{path}: kind: expected KubeProxyConfiguration, got 'KubeletConfiguration'" \
        in res.stderr


def test_detect_local_modes() -> None:
    base = {"clusterCIDR": "10.0.0.0/8"}
    assert config_from_dict(base).cluster_cidrs == ("10.0.0.0/8",)
    prefix = config_from_dict({**base, "detectLocalMode": "InterfaceNamePrefix",
                               "detectLocal": {"interfaceNamePrefix": "veth"}})
    assert (prefix.local_interface, prefix.cluster_cidrs) == ("veth+", ())
    assert "clusterCIDR not used: detectLocalMode is InterfaceNamePrefix" in prefix.notes
    bridge = run_config(["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0",
                         "--cluster-cidr=10.0.0.0/8"])
    assert (bridge.local_detect_mode, bridge.local_interface, bridge.cluster_cidrs) == (
        "BridgeInterface", "cbr0", ())
    with pytest.raises(ValueError, match="--pod-interface-name-prefix: required"):
        run_config(["--detect-local-mode=InterfaceNamePrefix"])


def test_every_v1alpha1_key_is_known() -> None:
    """Each key of KubeProxyConfiguration v1alpha1 (and its sub-blocks) is read:
    either honoured or in the ignored list with a reason."""
    v1alpha1 = yaml.safe_load(KUBEADM_CONFIG_CONF) | {
        "featureGates": {}, "windowsRunAsService": False,
        "iptables": {**yaml.safe_load(KUBEADM_CONFIG_CONF)["iptables"],
                     "snatNodeInternalIP": None}}
    config_from_dict(v1alpha1)  # no "unknown key"
    assert all(reason for reason in IGNORED.values())


def test_ignored_keys_with_values_are_reported_with_the_reason() -> None:
    cfg = config_from_dict({"conntrack": {"maxPerCore": 32768, "min": 131072},
                            "enableProfiling": True, "clientConnection": {"qps": 5, "burst": 10},
                            "ipvs": {"strictARP": True}})
    notes = "\n".join(cfg.notes)
    assert "ignored conntrack: pyagent leaves the node's conntrack sysctls" in notes
    assert "ignored clientConnection.qps=5, clientConnection.burst=10: no client-side" in notes
    assert "ignored enableProfiling=True" in notes and "ignored ipvs.strictARP=True" in notes


def test_every_kube_proxy_flag_is_accepted() -> None:
    """The whole flag list of kube-proxy's options.go (plus the logging flags
    it registers and old ones in old manifests) parses, and the ignored ones
    say why."""
    argv = []
    for flag in (*KP.HONOURED, *KP.IGNORED_FLAGS):
        if flag in ("cleanup", "write-config-to", "init-only"):
            continue  # they exit
        value = {"v": "2", "proxy-mode": "iptables", "detect-local-mode": "ClusterCIDR",
                 "nodeport-addresses": "primary", "feature-gates": "A=true",
                 "oom-score-adj": "-999", "bind-address": "0.0.0.0", "healthz-port": "10256",
                 "metrics-port": "10249", "master": "https://h:6443"}.get(flag)
        if flag in KP.BOOL_FLAGS:
            argv.append(f"--{flag}=true")
        elif value is not None:
            argv.append(f"--{flag}={value}")
        elif flag.endswith(("period", "timeout", "frequency", "established", "close-wait",
                            "stream")):
            argv.append(f"--{flag}=5s")
        else:
            argv.append(f"--{flag}=1")
    cfg = run_config(argv)
    notes = "\n".join(cfg.notes)
    for flag in KP.IGNORED_FLAGS:
        assert f"--{flag}=" in notes, flag
    assert cfg.masquerade_all and cfg.localhost_node_ports and cfg.node_port_primary
    assert cfg.healthz_bind_address == "0.0.0.0:10256"


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(KUBEADM_CONFIG_CONF.replace('hostnameOverride: ""', "hostnameOverride: a"))
    cfg = run_config(["--config", str(path), "--hostname-override=B", "--masquerade-all",
                      "--nodeport-addresses=primary,10.0.0.0/8", "--master=https://x:6443",
                      "--bind-address=192.168.0.9"])
    assert cfg.node_name == "b" and cfg.masquerade_all and cfg.api_server == "https://x:6443"
    assert cfg.node_port_primary and cfg.node_port_addresses == ("10.0.0.0/8",)
    assert cfg.bind_address == "192.168.0.9"


def test_bad_flags_are_refused() -> None:
    for argv, error in ((["--proxy-mode=kernelspace"], "Windows only"),
                        (["--mode=ebpf", "--proxy-mode=iptables"], "disagree"),
                        (["--feature-gates=A"], "NAME=true|false"),
                        (["--oom-score-adj=x"], "--oom-score-adj")):
        with pytest.raises(ValueError, match=error):
            run_config(argv)


def test_version() -> None:
    for argv in (["--version"], ["run", "--version"]):
        res = subprocess.run([sys.executable, "-m", "pyagent", *argv], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.startswith("pyagent 0."), res


def test_write_config_to_writes_what_run_would_use(tmp_path: Path) -> None:
    out = tmp_path / "effective.yaml"
    res = subprocess.run([sys.executable, "-m", "pyagent", "run",
                          *kube_up_args("https://10.0.0.1", "iptables"),
                          "--hostname-override=node-a", f"--write-config-to={out}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cfg = load_config(out)
    assert (cfg.mode, cfg.node_name, cfg.sync_period, cfg.min_sync_period) == (
        "iptables", "node-a", 60.0, 10.0)
    assert (cfg.local_detect_mode, cfg.oom_score_adj) == ("NodeCIDR", -998)


def _plan(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    mdir = tmp_path / "m"
    mdir.mkdir(exist_ok=True)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "spec": {"podCIDR": "10.8.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "namespace": "d"},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "externalTrafficPolicy": "Local",
                    "ports": [{"name": "h", "port": 80, "protocol": "TCP", "nodePort": 30005}]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": "w-1", "namespace": "d",
                        "labels": {"kubernetes.io/service-name": "w"}},
           "ports": [{"name": "h", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["10.8.1.5"], "nodeName": "node-a"},
                         {"addresses": ["10.8.2.5"], "nodeName": "node-b"}]}
    (mdir / "all.yaml").write_text(yaml.safe_dump_all([node, svc, eps]))
    return subprocess.run([sys.executable, "-m", "pyagent", "plan", "--manifests", str(mdir),
                           "--json", *argv], capture_output=True, text=True, timeout=60)


def test_plan_takes_the_kube_up_command_line(tmp_path: Path) -> None:
    res = _plan(tmp_path, *kube_up_args("https://10.0.0.1"), "--hostname-override=node-a")
    assert res.returncode == 0, res.stderr
    (entry,) = json.loads(res.stdout)["servicePorts"]
    assert entry["localEndpoints"] == ["10.8.1.5:8080"]  # node-a's, from --hostname-override
    assert entry["clusterEndpoints"] == ["10.8.1.5:8080", "10.8.2.5:8080"]
    bad = _plan(tmp_path, "--proxy-mode=kernelspace")
    assert bad.returncode == 2 and "Windows only" in bad.stderr


def test_plan_takes_the_kubeadm_config(tmp_path: Path) -> None:
    conf = tmp_path / "config.conf"
    conf.write_text(KUBEADM_CONFIG_CONF)
    res = _plan(tmp_path, f"--config={conf}", "--hostname-override=node-b")
    assert res.returncode == 0, res.stderr
    (entry,) = json.loads(res.stdout)["servicePorts"]
    assert entry["localEndpoints"] == ["10.8.2.5:8080"]


def test_interface_detectors_in_the_rules() -> None:
    """InterfaceNamePrefix / BridgeInterface: pods are what comes in through
    the interface, in the masquerade and eTP=Local rules of every packet mode."""
    from pyagent.dataplanes.iptables.rules import Renderer
    from pyagent.dataplanes.nftables.rules import Renderer as NftRenderer

    prefix = run_config(["--detect-local-mode=InterfaceNamePrefix",
                         "--pod-interface-name-prefix=veth", "--node-ip=192.168.0.2"])
    bridge = run_config(["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0",
                         "--node-ip=192.168.0.2"])
    nodecidr = run_config(["--detect-local-mode=NodeCIDR", "--node-ip=192.168.0.2"])
    for cfg, ipt, nft in ((prefix, "-i veth+", 'iifname != "veth*"'),
                          (bridge, "-i cbr0", 'iifname != "cbr0"')):
        for family in (4, 6):
            nat = Renderer(cfg, family).base_nat()
            assert nat["PYAGENT-MASQ-NONPOD"][0] == f"-A PYAGENT-MASQ-NONPOD {ipt} -j RETURN"
        assert nft in NftRenderer(cfg)._pod_match(4, negate=True)
    # NodeCIDR before start: no pod CIDRs yet (the run fills them from the Node)
    assert "PYAGENT-MASQ-NONPOD" not in Renderer(nodecidr, 4).base_nat()


def test_deprecated_port_flags_and_an_empty_address_turn_servers_off() -> None:
    from pyagent.observe.observability import Observability

    cfg = run_config(["--metrics-port=0", "--healthz-port=0"])
    assert cfg.metrics_bind_address == "" and cfg.healthz_bind_address == ""
    obs = Observability(cfg)
    obs.start()
    try:
        assert obs.metrics_port == 0 and obs.healthz_port == 0
    finally:
        obs.stop()
    moved = run_config(["--healthz-bind-address=127.0.0.1:10256", "--healthz-port=10999"])
    assert moved.healthz_bind_address == "127.0.0.1:10999"
