"""`pyagent plan`: the desired state of one node, computed from manifests.

It feeds the manifests through the same ServiceStore the agent runs on, so
what it prints is what the dataplanes would apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pyagent.cli import kubeproxy_flags as KP
from pyagent.cli.flags import load_node_state, resolve_config
from pyagent.core.model import join_host_port
from pyagent.core.planner import load_state
from pyagent.core.state import DesiredState, ServicePortState, diff_service_ports, plan_entry

EPILOG = """\
examples:
  pyagent plan --manifests ./cluster --node-name node-1 --json
  pyagent plan --kubeconfig ~/.kube/config --node-name node-1 --node-ip 192.168.0.2
  pyagent plan --manifests ./cluster --config node.yaml
  pyagent plan --manifests ./after --diff ./before --node-name node-1

Errors in manifests are reported on stderr naming the object; the exit code
is 0 as long as a state could be computed.
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plan", help="print the desired state of a node computed from manifests",
        allow_abbrev=False,
        description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    # kube-proxy's command lines carry --kubeconfig: with --manifests, the
    # manifests are read and it is not used
    p.add_argument("--manifests", type=Path, metavar="DIR",
                   help="directory of Service, EndpointSlice and Node YAML/JSON files")
    p.add_argument("--kubeconfig", help="without --manifests: read the objects from this "
                   "API server")
    p.add_argument("--node-name", help="the node to plan for (overrides the config file)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="KubeProxyConfiguration-style YAML (see docs/kube-proxy.md)")
    p.add_argument("--node-ip", action="append",
                   help="an address local to the node (default: the Node object's)")
    p.add_argument("--cluster-cidr", action="append", help="pod CIDR (comma-separated ok)")
    p.add_argument("--mode", choices=KP.MODES)
    # kube-proxy's command line, as `pyagent run` takes it
    KP.add_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--diff", type=Path, metavar="OLD_DIR",
                   help="print only what changes going from OLD_DIR's state to this one")


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args)
        state, errors, config = load_node_state(args, config)
        old_state = load_state(args.diff, config)[0] if args.diff else None
    except (ValueError, OSError) as exc:
        print(f"pyagent plan: {exc}", file=sys.stderr)
        return 2
    for err in errors:
        print(f"pyagent plan: {err}", file=sys.stderr)
    if old_state is not None:
        _print_diff(old_state, state, args.json)
    elif args.json:
        write_plan_json(state.to_plan_json())
    else:
        print(format_table(state.service_ports))
    return 0


def write_plan_json(plan: dict[str, Any]) -> None:
    """One service port per line: readable, and the C encoder keeps it fast."""
    entries = plan["servicePorts"]
    sys.stdout.write('{"servicePorts": [' + ("\n  " if entries else ""))
    sys.stdout.write(",\n  ".join(json.dumps(e) for e in entries))
    sys.stdout.write(("\n" if entries else "") + "]}\n")


def _print_diff(old: DesiredState, new: DesiredState, as_json: bool) -> None:
    added, removed, changed = diff_service_ports(old, new)
    if as_json:
        json.dump({"added": [plan_entry(s) for s in added],
                   "removed": [plan_entry(s) for s in removed],
                   "changed": [{"old": plan_entry(a), "new": plan_entry(b)} for a, b in changed]},
                  sys.stdout, indent=2)
        print()
        return
    for mark, states in (("+", added), ("-", removed), ("~", [b for _, b in changed])):
        for s in states:
            print(f"{mark} {format_table([s]).splitlines()[-1]}")


def _eps(eps: Any) -> str:
    if eps is None:
        return "-"
    return ",".join(sorted(e.addr for e in eps)) or "(none)"


def format_table(ports: Any) -> str:
    rows = [("SERVICE", "TYPE", "FRONTEND", "NODEPORT", "CLUSTER-ENDPOINTS", "LOCAL-ENDPOINTS",
             "ANY")]
    for s in ports:
        sp: Any = s.service if isinstance(s, ServicePortState) else s
        frontend = join_host_port(sp.cluster_ip, sp.port)
        rows.append((str(sp), sp.service_type, frontend, str(sp.node_port or "-"),
                     _eps(s.cluster_endpoints), _eps(s.local_endpoints),
                     "yes" if s.has_any_endpoints else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyagent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
