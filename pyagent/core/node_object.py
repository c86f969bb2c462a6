"""What a Node object says about the node, as kube-proxy reads it (pure):
its IPs, primary first, and its pod CIDRs. Used by `pyagent run` (through
nodeinfo) and by the offline planner alike."""

from __future__ import annotations

from collections.abc import Iterable

from pyagent.core.parse import parse_cidr, parse_ip


def node_ips(node: dict | None) -> tuple[str, ...]:
    """kube-proxy's node IPs from a Node object: InternalIP addresses first,
    then ExternalIP; the first address, then the first of the other family."""
    status = (node or {}).get("status") or {}
    addrs = [a for a in status.get("addresses") or [] if isinstance(a, dict)]
    ordered = ([a for a in addrs if a.get("type") == "InternalIP"]
               + [a for a in addrs if a.get("type") == "ExternalIP"])
    out: list[str] = []
    for entry in ordered:
        ip = parse_ip(entry.get("address"))
        if ip is None or any(parse_ip(o).version == ip.version for o in out):  # type: ignore[union-attr]
            continue
        out.append(str(ip))
    return tuple(out)


def pod_cidrs(node: dict | None) -> tuple[str, ...]:
    spec = (node or {}).get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return tuple(str(n) for n in (parse_cidr(c) for c in cidrs if isinstance(c, str)) if n)


def primary_ips(from_node: Iterable[str], bind_address: str) -> tuple[str, ...]:
    """The primary node IP first, then the other family's (kube-proxy's
    detectNodeIPs): a specific bindAddress is the primary of its family."""
    ips = list(from_node)
    bind = parse_ip(bind_address) if bind_address else None
    if bind is not None and not bind.is_unspecified:
        ips = [str(bind)] + [ip for ip in ips if parse_ip(ip).version != bind.version]  # type: ignore[union-attr]
    return tuple(ips)
