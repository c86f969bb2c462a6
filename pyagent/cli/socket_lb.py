"""`pyagent socket-lb`: the socket LB's scope on this node. `status` shows
it; `exclude NETNS` opts a pod's network namespace out (its connections
then reach the VIP, seen as such by a sidecar, and TC on the pod
interfaces balances them); `include` opts it back in. Works on the pinned
maps, with the agent running or not; the agent keeps the list."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pyagent.core.config import DEFAULT_BPFFS

if TYPE_CHECKING:
    from pyagent.dataplanes.ebpf.socket_lb import LBMaps


def _cookie(arg: str) -> int:
    """A netns path (/proc/PID/ns/net, /run/netns/NAME) or a cookie as
    `status` lists it."""
    from pyagent.dataplanes.ebpf import sock_scope

    if arg.isdigit():
        return int(arg)
    return sock_scope.netns_cookie(arg)


def _maps(bpffs: str) -> LBMaps:
    from pyagent.dataplanes.ebpf import socket_lb

    return socket_lb.open_pinned_maps(bpffs)


def _pod_lb(bpffs: str, on: bool) -> bool:
    """Set lb_pod_ingress's balancing; False when no TC programs ran here."""
    from pyagent.dataplanes.ebpf import tc

    try:
        maps = tc.open_pinned_tc_maps(bpffs)
    except FileNotFoundError:
        return False
    try:
        tc.set_pod_lb(maps, on)
    finally:
        maps.close()
    return True


def _has_netns_cookie(bpffs: str) -> bool:
    """Was the loaded socket LB built with its namespace checks? (Unknown,
    with no variant record: assume so.)"""
    from pyagent.dataplanes.ebpf import socket_lb

    variant = socket_lb.read_variant(bpffs) or {}
    return bool(variant.get("defines", {}).get("LB_HAVE_NETNS_COOKIE", 1))


def run_status(args: argparse.Namespace) -> int:
    from pyagent.dataplanes.ebpf import layout as L
    from pyagent.dataplanes.ebpf import sock_scope

    maps = _maps(args.bpffs)
    try:
        cfg = sock_scope.current(maps)
        out = {"hostNamespaceOnly": bool(cfg.flags & L.SockFlag.HOST_NS_ONLY),
               "hostNetnsCookie": cfg.host_netns_cookie,
               "excludedNetnsCookies": sock_scope.excluded(maps)}
    finally:
        maps.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("scope:", "host namespace only" if out["hostNamespaceOnly"] else "every namespace")
    excluded = out["excludedNetnsCookies"]
    print(f"opted out: {len(excluded)} network namespaces"
          + "".join(f"\n  {c}" for c in excluded))
    return 0


def run_change(args: argparse.Namespace) -> int:
    from pyagent.dataplanes.ebpf import sock_scope

    try:
        cookies = [_cookie(a) for a in args.netns]
    except OSError as exc:
        print(f"pyagent socket-lb {args.socket_lb_command}: {exc}", file=sys.stderr)
        return 1
    if args.socket_lb_command == "exclude" and not _has_netns_cookie(args.bpffs):
        print("pyagent socket-lb exclude: the socket LB loaded here has no "
              "bpf_get_netns_cookie (Linux 5.7): it cannot tell namespaces apart",
              file=sys.stderr)
        return 1
    maps = _maps(args.bpffs)
    try:
        if args.socket_lb_command == "exclude":
            # TC first: the pod's next connection must find a balancer there
            if not _pod_lb(args.bpffs, True):
                print("pyagent socket-lb exclude: no TC programs on this node's pod "
                      "interfaces (pyagent.podInterfaces): the pod's connections to "
                      "Services would not be balanced", file=sys.stderr)
                return 1
            sock_scope.exclude(maps, cookies)
        else:
            sock_scope.include(maps, cookies)
            if not sock_scope.skips_pods(maps):
                _pod_lb(args.bpffs, False)
    finally:
        maps.close()
    for a, c in zip(args.netns, cookies, strict=True):
        print(f"{args.socket_lb_command}d {a} (netns cookie {c})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("socket-lb", help="which pods the socket LB serves")
    ssub = p.add_subparsers(dest="socket_lb_command", required=True, metavar="SUBCOMMAND")
    st = ssub.add_parser("status", help="the scope and the opted-out namespaces")
    st.add_argument("--bpffs", default=DEFAULT_BPFFS)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_status)
    for verb, text in (("exclude", "opt network namespaces out of the socket LB"),
                       ("include", "opt them back in")):
        c = ssub.add_parser(verb, help=text,
                            epilog=f"example: pyagent socket-lb {verb} /proc/1234/ns/net")
        c.add_argument("netns", nargs="+", metavar="NETNS",
                       help="a network namespace path, or a cookie from `status`")
        c.add_argument("--bpffs", default=DEFAULT_BPFFS)
        c.set_defaults(func=run_change)
