"""`pyagent` command line: one module per verb (a leaf: commands never
import each other), shared flags in flags.py and kubeproxy_flags.py."""

from __future__ import annotations

import argparse
import logging
import sys

from pyagent.cli import (
    bpf,
    cleanup,
    maps,
    monitor,
    mount_host,
    plan,
    run,
    services,
    socket_lb,
    status,
    trace,
)
from pyagent.cli.kubeproxy_flags import version_text

# Each module exposes register(subparsers); its parser sets `func(args) -> int`.
COMMANDS = (run, plan, trace, maps, services, socket_lb, cleanup, bpf, mount_host, monitor,
            status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyagent", allow_abbrev=False,
        description="eBPF Kubernetes Service load balancer (kube-proxy replacement)",
        epilog="Run `pyagent COMMAND --help` for the options of each command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return int(args.func(args) or 0)
