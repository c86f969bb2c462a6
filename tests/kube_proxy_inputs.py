"""kube-proxy's inputs as real clusters carry them (test data).

KUBEADM_CONFIG_CONF is the `config.conf` key of the `kube-proxy` ConfigMap
that `kubeadm init` (v1.29 to v1.31, podSubnet 10.244.0.0/16) generates, as
`kubectl -n kube-system get cm kube-proxy -o yaml` shows it on such a
cluster (every field, mostly zero values); its DaemonSet runs `kube-proxy
--config=/var/lib/kube-proxy/config.conf --hostname-override=$(NODE_NAME)`.
KUBE_UP_ARGS is the command line kube-up's configure-helper.sh builds for a
GCE node (cluster/gce/manifests/kube-proxy.manifest), with its KUBE_PROXY_MODE
and DETECT_LOCAL_MODE options; the master address is a placeholder the tests
replace with their API server.
"""

KUBEADM_CONFIG_CONF = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"""

KUBEADM_DAEMONSET_ARGS = ["--config=/var/lib/kube-proxy/config.conf",
                          "--hostname-override=node-a"]

# kube-proxy --master=https://${KUBERNETES_MASTER_NAME} --kubeconfig=... --cluster-cidr=...
#   --oom-score-adj=-998 {{params}}, params = --v=2 --feature-gates=... [--proxy-mode=M]
#   --iptables-sync-period=1m --iptables-min-sync-period=10s --ipvs-sync-period=1m
#   --ipvs-min-sync-period=10s [--detect-local-mode=...]
MASTER = "https://MASTER"
KUBE_UP_ARGS = [
    f"--master={MASTER}", "--kubeconfig=/var/lib/kube-proxy/kubeconfig",
    "--cluster-cidr=10.8.0.0/14", "--oom-score-adj=-998", "--v=2",
    "--feature-gates=DynamicKubeletConfig=false,RotateKubeletServerCertificate=true,"
    "ExecProbeTimeout=false",
    "--iptables-sync-period=1m", "--iptables-min-sync-period=10s", "--ipvs-sync-period=1m",
    "--ipvs-min-sync-period=10s", "--detect-local-mode=NodeCIDR",
]


def kube_up_args(master: str, proxy_mode: str | None = None) -> list[str]:
    args = [a.replace(MASTER, master) for a in KUBE_UP_ARGS]
    if proxy_mode:  # configure-helper.sh puts it after the feature gates
        args.insert(6, f"--proxy-mode={proxy_mode}")
    return args
