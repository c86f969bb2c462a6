"""A corpus of hostile object names, and Service states built from them
directly (past the parser's name validation, as a bug or another source
might), for the dataplane escaping tests (unit and lab)."""

from __future__ import annotations

from pyagent.core.model import Endpoint, ServicePort
from pyagent.core.state import ServicePortState

HOSTILE = [
    'a"b', "a'b", "a`b`",
    'x"\n-A INPUT -j ACCEPT\n#',  # a quote, then a rule of the author's own
    '"\n:EVIL - [0:0]\n-A PREROUTING -j EVIL\nCOMMIT\n*filter\n:EVIL2 - [0:0]\n',
    "a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb",
    "#comment", "a;b", "a b", "   ", "",
    "a\\b", 'a\\"b', "a\\", "\\n",
    "x" * 300, "ü" * 200,
    "ünïcødé", "名前", "\u202eevil", "\u2028line", "\ud800",  # a lone surrogate
    "-j", "--comment", "-j ACCEPT", "--to-destination 6.6.6.6", "! -s", "-X",
    "} ; add table ip evil { chain c { type filter hook input priority 0 ; } }",
    "{", "}", "table", "chain", "flush ruleset", "delete table inet pyagent", "$var", "@set",
    "ns/name", "a/b/c", "..", "*", "?", "%s%n", "${IFS}",
]


def hostile_state(i: int, name: str, ns: str | None = None, port_name: str | None = None,
                  ip: str | None = None) -> ServicePortState:
    """One service port exercising every rule kind (ClusterIP with affinity,
    NodePort, externalIP, LB with source ranges, eTP=Local), named `name`."""
    ip = ip or f"10.96.{i // 250}.{i % 250 + 1}"
    sp = ServicePort(
        namespace=name if ns is None else ns, name=name,
        port_name=name if port_name is None else port_name, protocol="TCP", port=80, family=4,
        cluster_ip=ip, node_port=30000 + i, external_ips=(f"192.0.2.{i % 250 + 1}",),
        lb_ips=(f"198.51.100.{i % 250 + 1}",), lb_source_ranges=("203.0.113.0/24",),
        external_policy_local=True, affinity_timeout=600, service_type="LoadBalancer",
        health_check_node_port=32000 + i)
    local = Endpoint("10.244.0.10", 8080, node_name="node-1", is_local=True)
    remote = Endpoint("10.244.0.11", 8080, node_name="node-2")
    return ServicePortState(sp, (local, remote), (local,), (local, remote), True,
                            local_ready_count=1, lb_source_allow=("203.0.113.0/24",))


def plain_state(i: int, name: str = "plain") -> ServicePortState:
    return hostile_state(i, name, ns="ns", port_name="http")
