"""Object-derived text on its way into the kernel's rule parsers
(iptables-restore, nft -f): hashed, escaped or checked here, never trusted.

Names, namespaces and port names are validated at parse time (DNS-1123, as
the API server does), but the renderers must be safe without that (defence
in depth): in an iptables-restore line a quote ends the argument and a
newline starts a new command (a chain of the author's choosing); in an nft
script a brace or a semicolon does the same. So:

- chain, set and map names are hashes of the object's identity (short_hash),
  whose input encoding is injective, so two different objects never share
  a chain;
- the one name shown as text, the iptables comment, keeps only characters
  that no parser treats specially (comment), plus a hash when anything was
  dropped;
- every other object-derived value a renderer interpolates (addresses,
  CIDRs, ports, protocol, timeouts) must already be in its canonical form
  (check_state): a Service that is not is refused by its own status, and
  the others keep syncing.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re

from pyagent.core.model import PROTOCOLS, Endpoint
from pyagent.core.state import ServicePortState

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")  # never an option look-alike
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9._:/-]")


def _part(value: object) -> str:
    # Escapes the separator, so ("a/b", "c") and ("a", "b/c") differ; parts
    # without '/' or '\' (every valid name) hash as they always did.
    return str(value).replace("\\", "\\\\").replace("/", "\\/")


def short_hash(*parts: object) -> str:
    """16 base32 characters naming a chain/set after `parts` (stable across runs)."""
    digest = hashlib.sha256("/".join(map(_part, parts)).encode("utf-8", "surrogatepass"))
    return base64.b32encode(digest.digest()).decode()[:16]


def comment(text: str) -> str:
    """`text` as the argument of iptables' --comment (the caller quotes it):
    itself when plain, else its plain characters and a hash of the whole."""
    if _PLAIN.fullmatch(text):
        return text
    return f"_{_NOT_PLAIN.sub('_', text[:120])}~{short_hash(text)}"


# --- canonical values -------------------------------------------------------------------

def _ip(value: object, family: int, what: str) -> None:
    try:  # no '%': a scope id may hold any character, spaces and ';' included
        addr = ipaddress.ip_address(value) if isinstance(value, str) and "%" not in value \
            else None
    except ValueError:
        addr = None
    if addr is None or str(addr) != value or addr.version != family:
        raise ValueError(f"{what}: {value!r} is not a canonical IPv{family} address")


def _cidr(value: object, family: int, what: str) -> None:
    try:
        net = ipaddress.ip_network(value) if isinstance(value, str) and "%" not in value \
            else None
    except ValueError:
        net = None
    if net is None or str(net) != value or net.version != family:
        raise ValueError(f"{what}: {value!r} is not a canonical IPv{family} CIDR")


def _int(value: object, lo: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what}: {value!r} is not an integer {lo}-{hi}")


def check_state(sps: ServicePortState) -> None:
    """ValueError unless every object-derived value a renderer writes as
    text is canonical. Names need no check: they are only hashed or
    passed through comment()."""
    sp = sps.service
    f = sp.family
    if f not in (4, 6):
        raise ValueError(f"{sp.key!r}: family {f!r}")
    if sp.protocol not in PROTOCOLS:
        raise ValueError(f"protocol {sp.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    _int(sp.port, 1, 65535, "port")
    _int(sp.node_port, 0, 65535, "nodePort")
    _int(sp.health_check_node_port, 0, 65535, "healthCheckNodePort")
    if sp.affinity_timeout is not None:
        _int(sp.affinity_timeout, 1, 86400, "sessionAffinity timeout")
    if sp.cluster_ip is not None:
        _ip(sp.cluster_ip, f, "clusterIP")
    for ip in (*sp.external_ips, *sp.lb_ips):
        _ip(ip, f, "external or LB IP")
    for cidr in (*sp.lb_source_ranges, *sps.lb_source_allow):
        _cidr(cidr, f, "loadBalancerSourceRanges")
    seen: set[int] = set()
    for eps in (sps.cluster_endpoints, sps.local_endpoints, sps.all_endpoints, sps.terminating):
        for ep in eps or ():
            if id(ep) not in seen:  # the sets share their Endpoint objects
                seen.add(id(ep))
                _endpoint(ep, f)


def _endpoint(ep: Endpoint, family: int) -> None:
    _ip(ep.ip, family, "endpoint")
    _int(ep.port, 1, 65535, "endpoint port")
