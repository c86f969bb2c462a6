"""rtnl: the agent's own rtnetlink dumps give what pyroute2 gives (which it
used before), in a namespace of this test's with a bridge and its port, a
veth pair, addresses of both families, default routes of both families (one
in another table, which pyroute2 counts too) and routes with a destination
(which are not defaults); and the two questions the IPVS mode's leftover
check asks: a link by name, a route of the local table by protocol."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.root

SETUP = """
ip link set lo up
ip link add br-t type bridge
ip link add vt0 type veth peer name vt1
ip link set vt1 master br-t
ip link add vd0 type veth peer name vd1
ip link set br-t up; ip link set vt0 up; ip link set vt1 up; ip link set vd0 up
ip addr add 10.9.0.1/24 dev vt0
ip addr add 10.9.0.9/32 dev vt0
ip addr add fd09::1/64 dev vt0 nodad
ip addr add 10.8.0.1/24 dev br-t
ip route add default via 10.9.0.2 dev vt0
ip -6 route add default via fd09::2 dev vt0
ip route add 192.0.2.0/24 dev vd0
ip route add default dev vd0 table 100
ip route add local 10.77.0.1 dev lo table local proto 211
"""

DUMP = """
import json, socket
from pyroute2 import IPRoute
from ebpf import rtnl
with IPRoute() as ipr:
    theirs = {
        "links": sorted(
            [l["index"], l.get_attr("IFLA_IFNAME"),
             ((l.get_attr("IFLA_LINKINFO") and
               l.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")) or ""),
             l.get_attr("IFLA_MASTER")] for l in ipr.get_links()),
        "addresses": sorted([a["index"], a.get_attr("IFA_ADDRESS")] for a in ipr.get_addr()),
        "defaults": {str(f): sorted(r.get_attr("RTA_OIF") for r in ipr.get_default_routes(family=f))
                     for f in (socket.AF_INET, socket.AF_INET6)},
    }
ours = {
    "links": sorted([l.index, l.name, l.kind, l.master] for l in rtnl.links()),
    "addresses": sorted([i, a] for i, a in rtnl.addresses()),
    "defaults": {str(f): sorted(rtnl.default_route_links(f))
                 for f in (socket.AF_INET, socket.AF_INET6)},
}
ours["route_211"] = rtnl.has_route(255, 211)
ours["route_212"] = rtnl.has_route(255, 212) or rtnl.has_route(254, 211)
ours["vt0"], ours["nope"] = rtnl.link_index("vt0"), rtnl.link_index("nope0")
print(json.dumps({"theirs": theirs, "ours": ours}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pyagent-rtnl-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_dumps_match_pyroute2(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-ec", SETUP], check=True)
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", DUMP],
                         check=True, capture_output=True, text=True).stdout
    got = json.loads(out)
    ours = got["ours"]
    # what IPVS mode's leftover check asks: our VIP route in the local table
    assert ours.pop("route_211") is True and ours.pop("route_212") is False
    assert ours.pop("nope") is None
    vt0 = ours.pop("vt0")
    assert ours == got["theirs"]
    names = {name: (kind, master) for _, name, kind, master in got["ours"]["links"]}
    index = {name: i for i, name, _, _ in got["ours"]["links"]}
    assert names["vt1"] == ("veth", index["br-t"]) and names["br-t"] == ("bridge", None)
    assert [index["vt0"], "fd09::1"] in got["ours"]["addresses"]
    assert got["ours"]["defaults"]["2"] == sorted([index["vt0"], index["vd0"]])
    assert got["ours"]["defaults"]["10"] == [index["vt0"]] == [vt0]
