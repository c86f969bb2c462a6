"""The keys of a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1,
and the spellings of older and newer releases) that pyagent reads: the ones
it acts on, and the ones it accepts and does not act on, with the reason
`pyagent run` logs (docs/kube-proxy.md lists both)."""

from __future__ import annotations

_JSON = "pyagent always reads JSON from the API server"
_RATE = "no client-side rate limit: pyagent makes one list and one long watch per kind"
_CONNTRACK = ("pyagent leaves the node's conntrack sysctls (nf_conntrack_*) as they are "
              "(the ebpf mode's ClusterIP path does not use conntrack)")
_MARK = "pyagent's own chains use fixed marks (0x4000 masquerade, 0x8000 drop)"
_IPVS_TIMEOUT = "pyagent leaves IPVS connection timeouts as they are (ipvsadm --set)"
_WINDOWS = "Windows only"
_GONE = "unused (kube-proxy's removed userspace proxy)"
# KubeProxyConfiguration (and older/newer spellings') keys pyagent accepts and
# does not act on: dotted key -> why. `pyagent run` logs the ones that are set.
IGNORED: dict[str, str] = {
    "bindAddressHardFail": "pyagent always exits when it cannot bind healthz or metrics",
    "clientConnection.acceptContentTypes": _JSON, "clientConnection.contentType": _JSON,
    "clientConnection.qps": _RATE, "clientConnection.burst": _RATE,
    "configSyncPeriod": "no informer resync: every syncPeriod a full sync re-applies everything",
    "conntrack": _CONNTRACK, "linux.conntrack": _CONNTRACK,
    "enableProfiling": "no /debug/pprof (a Go runtime handler)",
    "showHiddenMetricsForVersion": "pyagent hides no metrics",
    "logging.flushFrequency": "Python's log handler writes each line at once",
    "logging.format": "pyagent logs text lines", "logging.options": "pyagent logs text lines",
    "logging.vmodule": "per-file verbosity is klog's",
    "portRange": _GONE, "udpIdleTimeout": _GONE,
    "resourceContainer": "removed from kube-proxy",
    "winkernel": _WINDOWS, "windowsRunAsService": _WINDOWS, "windows": _WINDOWS,
    "iptables.masqueradeBit": _MARK, "nftables.masqueradeBit": _MARK,
    "iptables.snatNodeInternalIP": "masquerading uses the outgoing interface's address",
    "ipvs.excludeCIDRs": "pyagent removes only virtual servers on the addresses it holds",
    "ipvs.strictARP": "pyagent leaves arp_ignore/arp_announce as they are (set them with "
                      "sysctl if the node must not answer ARP for kube-ipvs0's addresses)",
    "ipvs.tcpTimeout": _IPVS_TIMEOUT, "ipvs.tcpFinTimeout": _IPVS_TIMEOUT,
    "ipvs.udpTimeout": _IPVS_TIMEOUT,
    "masqueradeMark": "the conformance vectors' spelling; " + _MARK,
}
# Keys read (and acted on), per block ("" is the top level).
HONOURED = {
    "": {"apiVersion", "kind", "hostnameOverride", "bindAddress", "healthzBindAddress",
         "metricsBindAddress", "clientConnection", "featureGates", "mode", "iptables", "ipvs",
         "nftables", "detectLocalMode", "detectLocal", "clusterCIDR", "nodePortAddresses",
         "oomScoreAdj", "logging", "linux", "syncPeriod", "minSyncPeriod", "masqueradeAll",
         "pyagent",
         # pyagent's and trace's spellings, and the conformance vectors' proxier settings
         "nodeName", "nodeIP", "nodeIPs", "clusterCIDRs", "localDetector", "serviceCIDRs",
         "serviceCIDR", "interface_ips", "tracer_local_ips", "localhostNodePorts"},
    "clientConnection": {"kubeconfig"},
    "iptables": {"masqueradeAll", "localhostNodePorts", "syncPeriod", "minSyncPeriod"},
    "ipvs": {"scheduler", "syncPeriod", "minSyncPeriod"},
    "nftables": {"masqueradeAll", "syncPeriod", "minSyncPeriod"},
    "detectLocal": {"bridgeInterface", "interfaceNamePrefix"},
    "logging": {"verbosity"},
    "linux": {"masqueradeAll", "oomScoreAdj"},
}
