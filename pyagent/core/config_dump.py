"""The effective node configuration as a KubeProxyConfiguration file
(kube-proxy's --write-config-to): what `pyagent run` would use, in the
spelling `--config` reads back."""

from __future__ import annotations

import yaml

from pyagent.core.config import KUBE_PROXY_API_VERSION, KUBE_PROXY_KIND, NodeConfig


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def to_dict(config: NodeConfig) -> dict:
    block = {"syncPeriod": _duration(config.sync_period),
             "minSyncPeriod": _duration(config.min_sync_period)}
    mode_block = {"nftables": "nftables", "ipvs": "ipvs"}.get(config.mode, "iptables")
    data: dict = {
        "apiVersion": KUBE_PROXY_API_VERSION,
        "kind": KUBE_PROXY_KIND,
        "hostnameOverride": config.node_name,
        "bindAddress": config.bind_address,
        "clientConnection": {"kubeconfig": config.kubeconfig or ""},
        "healthzBindAddress": config.healthz_bind_address,
        "metricsBindAddress": config.metrics_bind_address,
        "featureGates": dict(config.feature_gates),
        "mode": config.mode,
        "clusterCIDR": ",".join(config.cluster_cidrs),
        "detectLocalMode": config.local_detect_mode,
        "detectLocal": {
            "interfaceNamePrefix": config.local_interface[:-1]
            if config.local_interface.endswith("+") else "",
            "bridgeInterface": "" if config.local_interface.endswith("+")
            else config.local_interface},
        "nodePortAddresses": [*(["primary"] if config.node_port_primary else []),
                              *config.node_port_addresses],
        "masqueradeAll": config.masquerade_all,
        "oomScoreAdj": config.oom_score_adj,
        mode_block: block,
        "pyagent": {"nodeIPs": list(config.node_ips), "bpffs": config.bpffs,
                    "interfaces": list(config.interfaces),
                    "podInterfaces": list(config.pod_interfaces),
                    "socketLBHostNamespaceOnly": config.socket_lb_host_ns_only,
                    "bpfLbMode": config.bpf_lb_mode,
                    "bpfLbAcceleration": config.bpf_lb_acceleration,
                    "lbAlgorithm": config.lb_algorithm},
    }
    if mode_block == "ipvs":
        block["scheduler"] = config.ipvs_scheduler
    if config.cgroup:
        data["pyagent"]["cgroup"] = config.cgroup
    if config.local_detect_mode == "NodeCIDR":
        data["clusterCIDR"] = ""
    return data


def to_yaml(config: NodeConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
