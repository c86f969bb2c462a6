"""This node's identity as kube-proxy derives it, for `pyagent run` without
--node-ip / --interface.

- Node IPs: kube-proxy takes the Node object's addresses, InternalIP first
  then ExternalIP, one per family, the first being the primary; a specific
  bindAddress replaces the primary of its family. pyagent adds the node's
  other local addresses after those (kube-proxy's iptables and IPVS modes
  accept NodePorts on every local address; nodePortAddresses narrows them,
  as in kube-proxy). Addresses of kube-ipvs0 (Service VIPs) and link-local
  ones are left out.
- NodeCIDR local-traffic detection: the Node's spec.podCIDRs (kube-proxy
  waits for them).
- TC attach points (ebpf mode): the interface that holds each primary node
  IP (else the one of the default route), unless it is a bridge or a bridge
  port, or a veth without the default route (a pod's or a lab's link, as in
  Cilium's device detection): then --interface must say.

Everything is read once at start (kube-proxy too reads the Node's addresses
once); a Node whose podCIDRs change makes the agent exit so that it restarts
with the new ones, as kube-proxy does.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ebpf import rtnl
from pyagent.core.node_object import pod_cidrs
from pyagent.core.parse import parse_ip

log = logging.getLogger(__name__)

SKIP_LINKS = ("kube-ipvs0",)  # IPVS mode's VIP holder: Service addresses, not node ones


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "bridge", "veth", ... ("" for physical devices)
    master: int | None
    addresses: tuple[str, ...]
    default_route: bool  # an IPv4 or IPv6 default route leaves through it


def links() -> list[Link]:
    """The links of this network namespace, with their addresses (rtnl)."""
    addrs: dict[int, list[str]] = {}
    for index, address in rtnl.addresses():
        addrs.setdefault(index, []).append(address)
    defaults = rtnl.default_route_links(socket.AF_INET) | \
        rtnl.default_route_links(socket.AF_INET6)
    return [Link(raw.index, raw.name, raw.kind, raw.master, tuple(addrs.get(raw.index, ())),
                 raw.index in defaults) for raw in rtnl.links()]


def local_addresses(all_links: list[Link]) -> tuple[str, ...]:
    """Global addresses of the node's links (not loopback, link-local or kube-ipvs0)."""
    out = []
    for link in all_links:
        if link.name in SKIP_LINKS:
            continue
        for text in link.addresses:
            ip = parse_ip(text)
            if ip is not None and not (ip.is_loopback or ip.is_link_local):
                out.append(str(ip))
    return tuple(dict.fromkeys(out))


def default_interfaces(primaries: Iterable[str], all_links: list[Link]
                       ) -> tuple[tuple[str, ...], list[str]]:
    """(interfaces for the TC programs, one log line per decision)."""
    by_ip = {ip: link for link in all_links for ip in link.addresses}
    chosen: list[str] = []
    notes = []
    for ip in primaries:
        link = by_ip.get(ip)
        how = "holds"
        if link is None:
            version = parse_ip(ip).version  # type: ignore[union-attr]
            link = next((lk for lk in all_links if lk.default_route and any(
                parse_ip(a) and parse_ip(a).version == version for a in lk.addresses)), None)
            how = "has the default route for"
        if link is None:
            notes.append(f"no interface holds node IP {ip} or its default route")
            continue
        why_not = ("a bridge" if link.kind == "bridge" else
                   "a bridge port" if link.master else
                   "a veth without the default route" if link.kind == "veth"
                   and not link.default_route else
                   "loopback" if link.name == "lo" else "")
        if why_not:
            notes.append(f"{link.name} {how} node IP {ip} but is {why_not}: not used for "
                         "NodePort/LB traffic from outside (pass --interface to use it)")
        elif link.name not in chosen:
            chosen.append(link.name)
            notes.append(f"interface {link.name} {how} node IP {ip}: TC programs go there")
    return tuple(chosen), notes


def fetch_node(get: Callable[[], dict | None], ready: Callable[[dict | None], bool],
               timeout: float, interval: float = 0.3,
               sleep: Callable[[float], Any] = time.sleep) -> dict | None:
    """Poll `get` until `ready(node)` or `timeout` (kube-proxy polls every
    300 ms for 30 s); the last node seen (maybe None)."""
    deadline = time.monotonic() + timeout
    node = None
    last_error = ""
    while True:
        try:
            node = get()
        except Exception as exc:  # the API server may not answer yet
            if str(exc) != last_error:
                log.warning("reading this node's Node object: %s", _one_line(exc))
                last_error = str(exc)
        if ready(node) or time.monotonic() >= deadline:
            return node
        sleep(interval)


def api_getter(api_client: Any, name: str) -> Callable[[], dict | None]:
    """GET /api/v1/nodes/NAME as a plain dict; None when it does not exist (404)."""
    from pyagent.sources.kube_http import ApiError, getter

    read_node = getter(api_client, f"/api/v1/nodes/{name}")

    def get() -> dict | None:
        try:
            resp = read_node(_request_timeout=(5, 10))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()
    return get


class PodCIDRGuard:
    """An ObjectSink in front of the agent's: calls `changed(reason)` when this
    node's Node object shows other podCIDRs than the ones the agent started
    with (NodeCIDR detection reads them once, like kube-proxy, which exits)."""

    def __init__(self, sink: Any, node_name: str, cidrs: tuple[str, ...],
                 changed: Callable[[str], None]) -> None:
        self.sink, self.node_name, self.cidrs, self.changed = sink, node_name, cidrs, changed
        self.accepts_pages = getattr(sink, "accepts_pages", False)

    def _check(self, kind: str, obj: dict) -> None:
        if kind != "Node" or (obj.get("metadata") or {}).get("name") != self.node_name:
            return
        now = pod_cidrs(obj)
        if now and set(now) != set(self.cidrs):
            self.changed(f"Node {self.node_name}: podCIDRs changed from "
                         f"{', '.join(self.cidrs)} to {', '.join(now)}")

    def replace(self, kind: str, objects: list[dict], **kw: Any) -> None:
        for obj in objects:
            self._check(kind, obj)
        self.sink.replace(kind, objects, **kw)

    def report(self, problems: Any) -> None:
        self.sink.report(problems)

    def upsert(self, kind: str, obj: dict) -> None:
        self._check(kind, obj)
        self.sink.upsert(kind, obj)

    def delete(self, kind: str, obj: dict) -> None:
        self.sink.delete(kind, obj)


def _one_line(exc: BaseException) -> str:
    from pyagent.sources.kube_errors import describe_error

    return describe_error(exc)
