"""Node config loading and what its addresses mean."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyagent.core.config import NodeConfig, config_from_dict, load_config, with_overrides
from pyagent.core.parse import parse_ip

FULL = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: node-1
clusterCIDR: 10.0.0.0/8,fd00:10::/64
nodePortAddresses: [192.168.0.0/24]
masqueradeAll: true
featureGates: {PreferSameTrafficDistribution: true, SomethingElse: false}
syncPeriod: 1m30s
minSyncPeriod: 500ms
healthzBindAddress: 127.0.0.1:0
metricsBindAddress: 127.0.0.1:0
mode: nftables
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: true}
pyagent:
  nodeIPs: [192.168.0.2, 2001:db8::1]
  bpffs: /tmp/bpf
  cgroup: /run/cg
  interfaces: [eth0]
  serviceCIDRs: [172.30.0.0/16]
"""


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.node_name == "node-1"
    assert cfg.cluster_cidrs == ("10.0.0.0/8", "fd00:10::/64")
    assert cfg.node_port_addresses == ("192.168.0.0/24",)
    assert cfg.masquerade_all and cfg.prefer_same_node and cfg.localhost_node_ports
    assert (cfg.sync_period, cfg.min_sync_period) == (90.0, 0.5)
    assert (cfg.healthz_bind_address, cfg.metrics_bind_address, cfg.mode) == (
        "127.0.0.1:0", "127.0.0.1:0", "nftables")
    assert cfg.node_ips == ("192.168.0.2", "2001:db8::1")
    assert (cfg.bpffs, cfg.cgroup, cfg.interfaces) == ("/tmp/bpf", "/run/cg", ("eth0",))
    assert cfg.service_cidrs == ("172.30.0.0/16",)


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg == NodeConfig()
    assert (cfg.sync_period, cfg.min_sync_period, cfg.mode, cfg.bpffs, cfg.cgroup) == (
        30.0, 1.0, "ebpf", "/sys/fs/bpf/pyagent", None)
    assert (cfg.healthz_bind_address, cfg.metrics_bind_address) == (
        "0.0.0.0:10256", "127.0.0.1:10249")
    assert cfg.reject_unknown_cluster_ip_ports and not cfg.accept_health_check_node_ports


def test_trace_spellings() -> None:
    cfg = config_from_dict({"nodeName": "n", "nodeIPs": ["192.168.0.2"],
                            "clusterCIDRs": ["10.0.0.0/8"], "masqueradeAll": False})
    assert (cfg.node_name, cfg.node_ips, cfg.cluster_cidrs) == (
        "n", ("192.168.0.2",), ("10.0.0.0/8",))
    cfg = config_from_dict({"localDetector": {"mode": "cidr", "cidr": "10.0.0.0/8"}})
    assert cfg.cluster_cidrs == ("10.0.0.0/8",)
    cfg = config_from_dict({"clusterCIDR": "10.0.0.0/8", "localDetector": {"mode": "none"}})
    assert cfg.cluster_cidrs == ()


def test_conformance_proxier_settings_are_a_valid_config() -> None:
    cfg = config_from_dict({
        "nodeName": "test-node", "nodeIP": "192.168.0.2",
        "localDetector": {"mode": "cidr", "cidr": "10.0.0.0/8"},
        "serviceCIDR": "172.30.0.0/16", "nodePortAddresses": None, "masqueradeAll": False,
        "masqueradeMark": "0x4000", "localhostNodePorts": True,
        "interface_ips": ["127.0.0.1", "192.168.0.2", "192.168.1.2"],
        "tracer_local_ips": ["192.168.0.2", "192.168.1.2"]})
    assert cfg.node_ips == ("192.168.0.2", "127.0.0.1", "192.168.1.2")
    assert (cfg.service_cidrs, cfg.cluster_cidrs) == (("172.30.0.0/16",), ("10.0.0.0/8",))
    assert cfg.localhost_node_ports and cfg.node_port_addresses == ()
    assert config_from_dict({"localDetector": "none", "clusterCIDR": "10.0.0.0/8"}
                            ).cluster_cidrs == ()
    assert config_from_dict({"localDetector": "10.0.0.0/8"}).cluster_cidrs == ("10.0.0.0/8",)


def test_primary_node_port_addresses() -> None:
    cfg = config_from_dict({"nodeIPs": ["192.168.0.2", "192.168.1.2", "2001:db8::1"],
                            "nodePortAddresses": ["primary"]})
    assert cfg.node_port_primary and cfg.node_port_addresses == ()
    assert cfg.node_port_ips(4) == ("192.168.0.2",)
    assert cfg.node_port_ips(6) == ("2001:db8::1",)
    # The node IPs given later (--node-ip flags, the Node object) are the ones
    # "primary" means: it used to expand at load time, so with --node-ip it
    # meant every node IP.
    flags = with_overrides(config_from_dict({"nodePortAddresses": ["primary"]}),
                           node_ips=("192.168.1.2", "192.168.0.2"))
    assert flags.node_port_ips(4) == ("192.168.1.2",)
    mixed = config_from_dict({"nodeIPs": ["192.168.0.2", "10.1.0.5", "10.2.0.5"],
                              "nodePortAddresses": ["primary", "10.2.0.0/16"]})
    assert mixed.node_port_ips(4) == ("192.168.0.2", "10.2.0.5")
    keywords = config_from_dict({"nodeIPs": ["192.168.0.2", "10.1.0.5"],
                                 "nodePortAddresses": ["all"]})
    assert keywords.node_port_ips(4) == ("192.168.0.2", "10.1.0.5")


@pytest.mark.parametrize("data,key", [
    ({"nodePortAdresses": []}, "nodePortAdresses"),
    ({"pyagent": {"nodeIP": "1.2.3.4"}}, "pyagent.nodeIP"),
    ({"syncPeriod": "30 seconds"}, "syncPeriod"),
    ({"masqueradeAll": "yes"}, "masqueradeAll"),
    ({"clusterCIDR": "10.0.0.0/33"}, "clusterCIDR"),
    ({"pyagent": {"nodeIPs": ["x"]}}, "pyagent.nodeIPs"),
    ({"featureGates": {"X": 1}}, "featureGates.X"),
    ({"localDetector": {"mode": "bridge"}}, "localDetector.mode"),
    ({"pyagent": {"socketLBHostNamespaceOnly": "true"}}, "pyagent.socketLBHostNamespaceOnly"),
])
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_from_dict(data)


def test_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- 1")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)


def test_overrides_ignore_unset_flags() -> None:
    cfg = NodeConfig(node_name="a")
    assert with_overrides(cfg, node_name=None).node_name == "a"
    assert with_overrides(cfg, node_name="b").node_name == "b"


def test_address_predicates() -> None:
    cfg = NodeConfig(node_ips=("192.168.0.2", "192.168.1.2", "2001:db8::1"),
                     cluster_cidrs=("10.0.0.0/8",),
                     node_port_addresses=("192.168.0.0/24",),
                     service_cidrs=("172.30.0.0/16",))
    ip = parse_ip
    assert cfg.is_pod(ip("10.1.2.3")) and not cfg.is_pod(ip("192.168.0.2"))
    assert cfg.has_local_detector(4) and not cfg.has_local_detector(6)
    assert cfg.is_node_local(ip("127.0.0.1")) and cfg.is_node_local(ip("192.168.1.2"))
    assert cfg.accepts_node_port(ip("192.168.0.2"))
    assert not cfg.accepts_node_port(ip("192.168.1.2"))  # outside nodePortAddresses
    assert cfg.accepts_node_port(ip("2001:db8::1"))  # no IPv6 CIDR given: every IPv6 node IP
    assert not cfg.accepts_node_port(ip("127.0.0.1"))
    assert with_overrides(cfg, localhost_node_ports=True, node_port_addresses=()
                          ).accepts_node_port(ip("127.0.0.1"))
    assert cfg.in_service_cidrs(ip("172.30.9.9"))
    assert str(cfg.primary_node_ip(6)) == "2001:db8::1"


def test_socket_lb_scope_key() -> None:
    assert not config_from_dict({}).socket_lb_host_ns_only
    on = config_from_dict({"pyagent": {"socketLBHostNamespaceOnly": True,
                                       "podInterfaces": ["veth+"]}})
    assert on.socket_lb_host_ns_only and on.pod_interfaces == ("veth+",)


def test_lb_mode_key() -> None:
    assert config_from_dict({}).bpf_lb_mode == "snat"
    assert config_from_dict({"pyagent": {"bpfLbMode": "hybrid"}}).bpf_lb_mode == "hybrid"
    with pytest.raises(ValueError, match=r"pyagent\.bpfLbMode: 'ipip' is not one of"):
        config_from_dict({"pyagent": {"bpfLbMode": "ipip"}})


def test_lb_acceleration_key_and_flags() -> None:
    import argparse

    from pyagent.cli import run

    assert config_from_dict({}).bpf_lb_acceleration == "disabled"
    on = config_from_dict({"pyagent": {"bpfLbAcceleration": "best-effort"}})
    assert on.bpf_lb_acceleration == "best-effort"
    with pytest.raises(ValueError, match=r"pyagent\.bpfLbAcceleration: 'xdp' is not one of"):
        config_from_dict({"pyagent": {"bpfLbAcceleration": "xdp"}})
    p = argparse.ArgumentParser()
    run.add_node_flags(p)
    for argv in (["--bpf-lb-acceleration", "native"], ["--xdp", "native"]):
        assert run.node_config(p.parse_args(argv)).bpf_lb_acceleration == "native"
    assert run.node_config(p.parse_args([])).bpf_lb_acceleration == "disabled"
