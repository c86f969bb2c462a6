"""`pyagent` command line: one sub-command module per verb."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pyagent.kubeproxy_flags import version_text

# Each module exposes register(subparsers); its parser sets `func(args) -> int`.
COMMANDS = ("cmd_run", "cmd_plan", "cmd_trace", "cmd_maps", "cmd_services", "cmd_cleanup",
            "cmd_bpf", "cmd_mount_host")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyagent", allow_abbrev=False,
        description="eBPF Kubernetes Service load balancer (kube-proxy replacement)",
        epilog="Run `pyagent COMMAND --help` for the options of each command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pyagent.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return int(args.func(args) or 0)
