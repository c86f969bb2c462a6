"""`pyagent trace`: what the node does with a flow (DNAT, DROP, REJECT,
ACCEPT or NO_MATCH), which endpoints it may reach, and whether it is
masqueraded, computed from the same desired state `pyagent plan` prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pyagent.cli.flags import resolve_config
from pyagent.core.inputs import load_single
from pyagent.core.model import PROTOCOLS
from pyagent.core.parse import show
from pyagent.core.planner import load_state
from pyagent.core.trace import Tracer

EPILOG = """\
examples:
  pyagent trace --manifests ./cluster --config node.yaml \\
      --src 10.0.0.2 --dst 172.30.0.41 --dport 80 --proto TCP --json
  pyagent trace --manifests ./cluster --config node.yaml --flows flows.json

--flows takes a JSON list of {"src", "dst", "dport", "proto"} objects (proto
defaults to TCP) and prints a JSON list of results in the same order.
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "trace", help="show what the node does with a flow",
        description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", type=Path, metavar="DIR",
                   help="directory of Service, EndpointSlice and Node YAML/JSON files")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="node config: nodeName, nodeIPs, clusterCIDRs, nodePortAddresses, ...")
    p.add_argument("--node-name", help="overrides the config file's node name")
    p.add_argument("--src", help="source IP")
    p.add_argument("--dst", help="destination IP")
    p.add_argument("--dport", type=int, help="destination port")
    p.add_argument("--proto", default="TCP", type=str.upper, choices=PROTOCOLS)
    p.add_argument("--flows", type=Path, metavar="FILE", help="trace every flow in a JSON list")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--bpf", action="store_true",
                   help="ask the loaded TC program instead of the model: a synthetic packet "
                        "through BPF_PROG_TEST_RUN against the live maps (no --manifests)")
    p.add_argument("--bpffs", default="/sys/fs/bpf/pyagent", help="with --bpf: the agent's bpffs")
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
    from pyagent.dataplanes.ebpf.tc_trace import trace_pinned

    if None in (args.src, args.dst, args.dport):
        print("pyagent trace --bpf: give --src, --dst and --dport", file=sys.stderr)
        return 2
    if args.proto not in ("TCP", "UDP"):  # the synthetic packet is a TCP SYN or a datagram
        print(f"pyagent trace --bpf: --proto {args.proto}: TCP or UDP", file=sys.stderr)
        return 2
    try:
        res = trace_pinned(args.bpffs, args.src, args.dst, args.dport, args.proto)
    except (OSError, ValueError) as exc:
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
    if args.manifests is None:
        print("pyagent trace: --manifests DIR is required (or --bpf)", file=sys.stderr)
        return 2
    if args.flows is None and None in (args.src, args.dst, args.dport):
        print("pyagent trace: give --src, --dst and --dport, or --flows FILE", file=sys.stderr)
        return 2
    try:
        flows = read_flows(args.flows) if args.flows else [
            (args.src, args.dst, args.dport, args.proto)]
        state, errors, config = load_state(args.manifests, resolve_config(args))
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
    if res["endpoints"]:
        text += " -> " + ", ".join(res["endpoints"])
    if res["masquerade"]:
        text += " (masqueraded)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyagent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["trace", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
