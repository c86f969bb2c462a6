"""`pyagent trace`: what the node does with a flow (DNAT, DROP, REJECT,
ACCEPT or NO_MATCH), which endpoints it may reach, and whether it is
masqueraded, computed from the same desired state `pyagent plan` prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pyagent.cli.flags import load_node_state, resolve_config
from pyagent.core.inputs import load_single
from pyagent.core.model import PROTOCOLS
from pyagent.core.parse import show
from pyagent.core.trace import Tracer

EPILOG = """\
examples:
  pyagent trace --manifests ./cluster --config node.yaml \\
      --src 10.0.0.2 --dst 172.30.0.41 --dport 80 --proto TCP --json
  pyagent trace --manifests ./cluster --config node.yaml --flows flows.json
  pyagent trace --kubeconfig ~/.kube/config --node-name node-1 --node-ip 192.168.0.2 \\
      --src 203.0.113.7 --dst 192.168.0.2 --dport 30080
  pyagent trace --bpf --dst 10.96.0.10 --dport 80        # the socket hooks' answer
  pyagent trace --bpf --src 203.0.113.7 --dst 192.168.0.2 --dport 30080   # TC's

--flows takes a JSON list of {"src", "dst", "dport", "proto"} objects (proto
defaults to TCP) and prints a JSON list of results in the same order.
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "trace", help="show what the node does with a flow",
        description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # kube-proxy's command lines carry --kubeconfig: with --manifests, the
    # manifests are read and it is not used
    p.add_argument("--manifests", type=Path, metavar="DIR",
                   help="directory of Service, EndpointSlice and Node YAML/JSON files")
    p.add_argument("--kubeconfig", help="without --manifests: read the objects from this "
                   "API server")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="node config: nodeName, nodeIPs, clusterCIDRs, nodePortAddresses, ...")
    p.add_argument("--node-name", help="overrides the config file's node name")
    p.add_argument("--node-ip", action="append",
                   help="an address local to the node (NodePorts answer on it; default: the "
                        "config file's, else the Node object's)")
    p.add_argument("--src", help="source IP")
    p.add_argument("--dst", help="destination IP")
    p.add_argument("--dport", type=int, help="destination port")
    p.add_argument("--proto", default="TCP", type=str.upper, choices=PROTOCOLS)
    p.add_argument("--flows", type=Path, metavar="FILE", help="trace every flow in a JSON list")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--bpf", action="store_true",
                   help="ask the loaded kernel programs instead of the model (no --manifests): "
                        "the socket hooks through a real connect() from the agent's cgroup, "
                        "or TC through a synthetic packet (BPF_PROG_TEST_RUN, live maps)")
    p.add_argument("--path", choices=("auto", "socket", "tc"), default="auto",
                   help="with --bpf: which datapath (auto: tc when --src is given, else socket)")
    p.add_argument("--bpffs", default="/sys/fs/bpf/pyagent", help="with --bpf: the agent's bpffs")
    p.add_argument("--cgroup", help="with --bpf, socket path: the agent's cgroup (default: "
                   "the one its status file names)")
    p.set_defaults(func=run)
    return p


def read_flows(path: Path) -> list[tuple[str, str, int, str]]:
    """The flows of a JSON (or YAML) list; ValueError naming the file and flow."""
    data = load_single(Path(path))  # the bounded loader of every input file
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of flows")
    flows = []
    for i, f in enumerate(data):
        if not isinstance(f, dict) or not {"src", "dst", "dport"} <= f.keys():
            raise ValueError(f"{path}: flow {i}: needs src, dst and dport")
        dport = f["dport"]
        if isinstance(dport, bool) or not isinstance(dport, int) or not 0 <= dport <= 65535:
            raise ValueError(f"{path}: flow {i}: invalid dport {show(dport)}")
        proto = f.get("proto") or "TCP"
        for name, value in (("src", f["src"]), ("dst", f["dst"]), ("proto", proto)):
            if not isinstance(value, str):
                raise ValueError(f"{path}: flow {i}: {name}: expected a string, got "
                                 f"{show(value)}")
        flows.append((f["src"], f["dst"], dport, proto))
    return flows


def run_bpf(args: argparse.Namespace) -> int:
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import tc
    from pyagent.dataplanes.ebpf.sock_trace import NotLoaded, trace_socket
    from pyagent.dataplanes.ebpf.tc_trace import trace_pinned
    from pyagent.observe import statusfile

    path = args.path if args.path != "auto" else ("tc" if args.src else "socket")
    if None in (args.dst, args.dport) or (path == "tc" and args.src is None):
        print("pyagent trace --bpf: give --dst and --dport (and --src for the TC path)",
              file=sys.stderr)
        return 2
    if args.proto not in ("TCP", "UDP"):  # a TCP SYN / connect() or a datagram
        print(f"pyagent trace --bpf: --proto {args.proto}: TCP or UDP", file=sys.stderr)
        return 2
    try:
        if path == "socket":
            cgroup = args.cgroup or (statusfile.read(args.bpffs) or {}).get("cgroup")
            res = trace_socket(args.bpffs, cgroup, args.dst, args.dport, args.proto)
        else:
            ingress = tc.prog_pin_path(args.bpffs, tc.PROG_NETDEV_INGRESS)
            if not os.path.exists(ingress) or not os.path.exists(
                    L.TC_MAPS["lb4_ct"].pin_path(args.bpffs)):
                raise NotLoaded(f"the TC datapath is not loaded in {args.bpffs} (no {ingress}): "
                                "is the agent running with --interface? For ClusterIPs use "
                                "the socket path (--path socket)")
            res = trace_pinned(args.bpffs, args.src, args.dst, args.dport, args.proto)
    except (NotLoaded, OSError, ValueError) as exc:
        print(f"pyagent trace --bpf: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(res, sys.stdout, default=str)
        print()
    else:
        print(res.get("text") or format_result(res))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dport is not None and not 0 <= args.dport <= 65535:
        print(f"pyagent trace: --dport {args.dport}: expected 0-65535", file=sys.stderr)
        return 2
    if args.bpf:
        return run_bpf(args)
    if args.flows is None and None in (args.src, args.dst, args.dport):
        print("pyagent trace: give --src, --dst and --dport, or --flows FILE", file=sys.stderr)
        return 2
    try:
        flows = read_flows(args.flows) if args.flows else [
            (args.src, args.dst, args.dport, args.proto)]
        state, errors, config = load_node_state(args, resolve_config(args))
        tracer = Tracer(state, config)
        results = [tracer.trace(*flow) for flow in flows]
    except (ValueError, OSError) as exc:
        print(f"pyagent trace: {exc}", file=sys.stderr)
        return 2
    for err in errors:
        print(f"pyagent trace: {err}", file=sys.stderr)
    if args.flows is not None:
        json.dump(results, sys.stdout, indent=2)
        print()
    elif args.json:
        json.dump(results[0], sys.stdout)
        print()
    else:
        print(format_result(results[0]))
    return 0


def format_result(res: dict[str, Any]) -> str:
    text = res["verdict"]
    if res.get("endpoints"):
        text += " -> " + ", ".join(res["endpoints"])
    elif res.get("endpoint"):  # the socket path: the backend the hook chose
        text += " -> " + res["endpoint"]
    if res.get("masquerade"):
        text += " (masqueraded)"
    if res.get("path") == "socket":
        text += f" (socket hooks of {res['cgroup']}" + (
            f", connect(): {res['errno']})" if res.get("errno") else ")")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyagent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["trace", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
