"""kube-proxy's command line, accepted by `pyagent run` and `pyagent plan`
under kube-proxy's own names, so a kube-proxy DaemonSet's or kube-up's
command line works unchanged.

Every flag of kube-proxy's options.go (and the klog/logs flags it registers,
and a few removed ones old manifests still pass) is either honoured, or
accepted and reported as ignored with the reason (`pyagent run` logs one line
per reason). Flags follow pflag's syntax: `--flag=value` or `--flag value`,
booleans also bare (`--cleanup`) or `--cleanup=false`, lists comma-separated.
Unlike kube-proxy, flags given together with --config win over the file (as
all of pyagent's flags do); kube-proxy ignores most of them then.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from pyagent.core import config as C
from pyagent.core.config import NodeConfig
from pyagent.dataplanes.registry import MODES

_CONNTRACK = C.IGNORED["conntrack"]
_IPVS_TIMEOUT = C.IGNORED["ipvs.tcpTimeout"]
_KLOG = "pyagent logs text lines to stderr (klog's file and header options do not apply)"
_API = C.IGNORED["clientConnection.qps"]
# flag -> why pyagent accepts it and does nothing with it
IGNORED_FLAGS: dict[str, str] = {
    "kube-api-content-type": C.IGNORED["clientConnection.contentType"],
    "kube-api-burst": _API, "kube-api-qps": _API,
    "bind-address-hard-fail": C.IGNORED["bindAddressHardFail"],
    "profiling": C.IGNORED["enableProfiling"],
    "show-hidden-metrics-for-version": C.IGNORED["showHiddenMetricsForVersion"],
    "iptables-masquerade-bit": C.IGNORED["iptables.masqueradeBit"],
    "ipvs-exclude-cidrs": C.IGNORED["ipvs.excludeCIDRs"],
    "ipvs-strict-arp": C.IGNORED["ipvs.strictARP"],
    "ipvs-tcp-timeout": _IPVS_TIMEOUT, "ipvs-tcpfin-timeout": _IPVS_TIMEOUT,
    "ipvs-udp-timeout": _IPVS_TIMEOUT,
    "conntrack-max-per-core": _CONNTRACK, "conntrack-min": _CONNTRACK,
    "conntrack-max": _CONNTRACK,
    "conntrack-tcp-timeout-established": _CONNTRACK,
    "conntrack-tcp-timeout-close-wait": _CONNTRACK, "conntrack-tcp-be-liberal": _CONNTRACK,
    "conntrack-udp-timeout": _CONNTRACK, "conntrack-udp-timeout-stream": _CONNTRACK,
    "config-sync-period": C.IGNORED["configSyncPeriod"],
    "udp-timeout": C.IGNORED["udpIdleTimeout"], "proxy-port-range": C.IGNORED["portRange"],
    "resource-container": C.IGNORED["resourceContainer"],
    "windows-service": C.IGNORED["windowsRunAsService"],
    "cleanup-ipvs": "pyagent always removes what other modes left when it starts",
    "vmodule": C.IGNORED["logging.vmodule"],
    "logging-format": C.IGNORED["logging.format"],
    "log-flush-frequency": C.IGNORED["logging.flushFrequency"],
    "log-json-split-stream": _KLOG, "log-json-info-buffer-size": _KLOG,
    "log-text-split-stream": _KLOG, "log-text-info-buffer-size": _KLOG,
    "logtostderr": _KLOG, "alsologtostderr": _KLOG, "log-dir": _KLOG,
    "log-file-max-size": _KLOG, "one-output": _KLOG, "skip-headers": _KLOG,
    "skip-log-headers": _KLOG, "stderrthreshold": _KLOG, "add-dir-header": _KLOG,
    "log-backtrace-at": _KLOG,
}
BOOL_FLAGS = frozenset({
    "cleanup", "masquerade-all", "iptables-localhost-nodeports", "init-only",
    "bind-address-hard-fail", "profiling", "ipvs-strict-arp", "conntrack-tcp-be-liberal",
    "logtostderr", "alsologtostderr", "one-output", "skip-headers", "skip-log-headers",
    "add-dir-header", "log-json-split-stream", "log-text-split-stream", "windows-service",
    "cleanup-ipvs",
})
# Honoured flags (run and plan); --config, --cluster-cidr, --kubeconfig,
# --healthz-bind-address and --metrics-bind-address are pyagent's own too.
HONOURED = (
    "hostname-override", "proxy-mode", "v", "cleanup", "nodeport-addresses", "feature-gates",
    "master", "oom-score-adj", "iptables-sync-period", "iptables-min-sync-period",
    "ipvs-sync-period", "ipvs-min-sync-period", "ipvs-scheduler", "detect-local-mode",
    "pod-interface-name-prefix", "pod-bridge-interface", "bind-address", "healthz-port",
    "metrics-port", "masquerade-all", "iptables-localhost-nodeports", "write-config-to",
    "init-only", "log-file",
)


def dest(flag: str) -> str:
    return "kp_" + flag.replace("-", "_")


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "t", "true", "yes"):
        return True
    if low in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_HELP = {
    "hostname-override": "the Node's name (as --node-name)",
    "proxy-mode": "as --mode (ebpf, iptables, nftables, ipvs, userspace)",
    "cleanup": "remove kube-proxy's rules, tables and IPVS state, then exit",
    "nodeport-addresses": "CIDRs and/or 'primary', 'all', 'localhost' (comma-separated)",
    "feature-gates": "NAME=true|false,...",
    "master": "API server URL; overrides the kubeconfig's (or the in-cluster) address",
    "oom-score-adj": "the agent's oom_score_adj, -1000..1000",
    "iptables-sync-period": "full resync period (modes other than ipvs)",
    "iptables-min-sync-period": "minimum time between syncs (modes other than ipvs)",
    "ipvs-sync-period": "full resync period (ipvs mode)",
    "ipvs-min-sync-period": "minimum time between syncs (ipvs mode)",
    "ipvs-scheduler": "default IPVS scheduler",
    "detect-local-mode": "ClusterCIDR, NodeCIDR, InterfaceNamePrefix or BridgeInterface",
    "pod-interface-name-prefix": "pods' interfaces (InterfaceNamePrefix)",
    "pod-bridge-interface": "the pod bridge (BridgeInterface)",
    "bind-address": "the primary node IP (0.0.0.0 or :: : from the Node object)",
    "healthz-port": "deprecated: the healthz port (0: off)",
    "metrics-port": "deprecated: the metrics port (0: off)",
    "masquerade-all": "masquerade all ClusterIP traffic (packet modes)",
    "iptables-localhost-nodeports": "NodePorts on 127.0.0.1 (iptables mode)",
    "write-config-to": "write the effective configuration (YAML) to this file and exit",
    "init-only": "exit at once: pyagent needs no separate privileged init step",
    "log-file": "also write the log to this file",
}


def add_flags(p: argparse.ArgumentParser) -> None:
    """Every kube-proxy flag, into `p` (which already has pyagent's own).
    The ignored ones are accepted but not listed in --help."""
    g = p.add_argument_group(
        "kube-proxy's flags", "kube-proxy's command line, accepted under its names; "
        "its other flags are accepted and logged as ignored (docs/kube-proxy.md)")
    for flag in (*HONOURED, *IGNORED_FLAGS):
        help_ = _HELP.get(flag, argparse.SUPPRESS)
        if flag == "v":
            g.add_argument("-v", "--v", dest=dest(flag), type=int, metavar="N",
                           help="log verbosity (4 or more: debug)")
        elif flag in BOOL_FLAGS:
            g.add_argument(f"--{flag}", dest=dest(flag), nargs="?", const=True,
                           type=parse_bool, metavar="BOOL", help=help_)
        else:
            g.add_argument(f"--{flag}", dest=dest(flag), metavar="VALUE", help=help_)
    g.add_argument("--version", action="version", version=version_text(),
                   help="print the version and exit")


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pyagent {version('pyagent')}"
    except PackageNotFoundError:
        return "pyagent (not installed)"


def _given(args: argparse.Namespace, flag: str) -> Any:
    return getattr(args, dest(flag), None)


def flag_mode(args: argparse.Namespace) -> str | None:
    """The mode the flags ask for (--mode or --proxy-mode), if any."""
    mode, proxy_mode = getattr(args, "mode", None), _given(args, "proxy-mode")
    if proxy_mode == "":
        proxy_mode = None
    if proxy_mode is not None and proxy_mode not in MODES:
        hint = " (Windows only)" if proxy_mode == "kernelspace" else ""
        raise ValueError(f"--proxy-mode: {proxy_mode!r}{hint} is not one of {', '.join(MODES)}")
    if mode and proxy_mode and mode != proxy_mode:
        raise ValueError(f"--mode {mode} and --proxy-mode {proxy_mode} disagree")
    return mode or proxy_mode


def _duration(flag: str) -> Callable[[str], float]:
    return lambda text: C._duration(text, f"--{flag}")


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _gates(text: str) -> dict[str, bool]:
    out = {}
    for part in _list(text):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--feature-gates: expected NAME=true|false, got {part!r}")
        try:
            out[name.strip()] = parse_bool(value)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--feature-gates: {name}: {exc}") from None
    return out


def apply(args: argparse.Namespace, config: NodeConfig) -> NodeConfig:
    """`config` with the kube-proxy flags of `args` on top; notes added for
    the ignored ones (and for flags the mode does not read)."""
    changes: dict[str, Any] = {}
    notes: list[str] = []
    name = _given(args, "hostname-override")
    if name is not None:
        if not name.strip():
            raise ValueError("--hostname-override: empty")
        changes["node_name"] = name.strip().lower()
    if (mode := flag_mode(args)) is not None:
        changes["mode"] = mode
    mode = changes.get("mode", config.mode)
    if (v := _given(args, "v")) is not None:
        changes["log_verbosity"] = v
    if (text := _given(args, "nodeport-addresses")) is not None:
        cidrs, primary = C._node_port_addresses({"nodePortAddresses": _list(text)})
        changes.update(node_port_addresses=cidrs, node_port_primary=primary)
    if (text := _given(args, "feature-gates")) is not None:
        gates = {**config.feature_gates, **_gates(text)}
        changes.update(feature_gates=gates,
                       prefer_same_node=gates.get(C.PREFER_SAME_NODE_GATE, False),
                       honour_lb_ip_mode=gates.get(C.LB_IP_MODE_GATE, True))
    if (master := _given(args, "master")) is not None:
        changes["api_server"] = master.strip() or None
    if (adj := _given(args, "oom-score-adj")) is not None:
        changes["oom_score_adj"] = C.oom_score_adj(adj, "--oom-score-adj")
    # kube-proxy applies --iptables-* unless the mode is ipvs, --ipvs-* only then.
    family = "ipvs" if mode == "ipvs" else "iptables"
    for kind, attr in (("sync-period", "sync_period"), ("min-sync-period", "min_sync_period")):
        for prefix in ("iptables", "ipvs"):
            flag = f"{prefix}-{kind}"
            if (text := _given(args, flag)) is None:
                continue
            if prefix == family:
                changes[attr] = _duration(flag)(text)
            else:
                notes.append(f"--{flag} not used: the mode is {mode}")
    if (text := _given(args, "ipvs-scheduler")) is not None and text:
        changes["ipvs_scheduler"] = text
    detect = _local_detector(args, config)
    changes.update(detect)
    if (text := _given(args, "bind-address")) is not None:
        changes["bind_address"] = C._bind_address({"bindAddress": text})
    for flag, attr in (("masquerade-all", "masquerade_all"),
                       ("iptables-localhost-nodeports", "localhost_node_ports")):
        if (value := _given(args, flag)) is not None:
            changes[attr] = value
    for flag, attr, default in (("healthz-port", "healthz_bind_address", 10256),
                                ("metrics-port", "metrics_bind_address", 10249)):
        # --healthz-bind-address (kube-proxy's and pyagent's), then the port flag
        if (address := getattr(args, attr, None)) is not None:
            changes[attr] = C.with_default_port(address, default) if address else ""
        if (text := _given(args, flag)) is not None:
            changes[attr] = _deprecated_port(changes.get(attr, getattr(config, attr)), text,
                                             flag, default)
    by_reason: dict[str, list[str]] = {}
    for flag, why in IGNORED_FLAGS.items():
        value = _given(args, flag)
        if value is not None:
            by_reason.setdefault(why, []).append(f"--{flag}={value}")
    notes += [f"ignored {', '.join(flags)}: {why}" for why, flags in by_reason.items()]
    out = dataclasses.replace(config, **changes)
    return dataclasses.replace(out, notes=out.notes + tuple(notes))


def _local_detector(args: argparse.Namespace, config: NodeConfig) -> dict[str, Any]:
    mode = _given(args, "detect-local-mode")
    prefix, bridge = _given(args, "pod-interface-name-prefix"), _given(args, "pod-bridge-interface")
    if not mode:
        if (prefix or bridge) and config.local_detect_mode in ("InterfaceNamePrefix",
                                                              "BridgeInterface"):
            mode = config.local_detect_mode  # the file's mode, this flag's interface
        else:
            return {}
    if mode not in C.LOCAL_MODES:
        raise ValueError(f"--detect-local-mode: {mode!r} is not one of "
                         f"{', '.join(C.LOCAL_MODES)}")
    out: dict[str, Any] = {"local_detect_mode": mode}
    if mode == "InterfaceNamePrefix":
        if not (prefix or config.local_interface.endswith("+")):
            raise ValueError("--pod-interface-name-prefix: required with "
                             "--detect-local-mode=InterfaceNamePrefix")
        out["local_interface"] = prefix + "+" if prefix else config.local_interface
        out["cluster_cidrs"] = ()
    elif mode == "BridgeInterface":
        if not (bridge or (config.local_interface and not config.local_interface.endswith("+"))):
            raise ValueError("--pod-bridge-interface: required with "
                             "--detect-local-mode=BridgeInterface")
        out["local_interface"] = bridge or config.local_interface
        out["cluster_cidrs"] = ()
    elif mode == "NodeCIDR":
        out.update(local_interface="", cluster_cidrs=())
    else:
        out["local_interface"] = ""
    return out


def _deprecated_port(address: str, text: str, flag: str, default: int) -> str:
    """--healthz-port / --metrics-port: the port of the bind address; 0 turns
    the server off (kube-proxy's deprecated flags)."""
    from pyagent.core.model import join_host_port
    from pyagent.observe.httpserver import parse_bind_address

    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"--{flag}: expected a port, got {text!r}")
    if int(text) == 0:
        return ""
    host = parse_bind_address(address, default)[0] if address else "0.0.0.0"
    return join_host_port(host, int(text))


def pyagent_cluster_cidrs(values: list[str] | None) -> tuple[str, ...] | None:
    """--cluster-cidr: repeatable, and comma-separated as kube-proxy takes it."""
    if not values:
        return None
    return tuple(c for v in values for c in _list(v))
