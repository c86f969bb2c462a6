"""`pyagent bpf print`: the BPF C text exactly as BCC compiles it."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from pyagent.dataplanes.ebpf import socket_lb

    if args.program in ("sock", "all"):
        print(socket_lb.source_text())
    if args.program in ("tc", "all"):
        from pyagent.dataplanes.ebpf import tc

        print(tc.source_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bpf", help="BPF program tools")
    bsub = p.add_subparsers(dest="bpf_command", required=True, metavar="SUBCOMMAND")
    pr = bsub.add_parser("print", help="print the preprocessed BPF text and exit")
    pr.add_argument("program", nargs="?", choices=("sock", "tc", "all"), default="all",
                    help="the socket LB, the TC programs, or both (default)")
    pr.set_defaults(func=run)
