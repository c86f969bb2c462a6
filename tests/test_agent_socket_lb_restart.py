"""A restart that changes the socket LB's scope (two-node lab, node0): the
host-namespace-only agent stops as for an upgrade (pins, links and TC
filters stay), the next one runs with the default scope and hands the pods
back to the socket LB: TC stops balancing them, a sidecar sees no VIP, and
every connection keeps being served."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_agent_socket_lb_scope import CIP4, CIP6, Agent, Sidecar, client

from pyagent.lab.cluster import Cluster

pytestmark = pytest.mark.root


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, pods_per_node=2, tcp_ports=(8080,), udp_ports=(5353,)) as c:
        yield c


def test_restart_into_the_default_scope_hands_pods_back(cluster: Cluster) -> None:
    n0 = cluster.nodes[0]
    first = Agent(cluster, "hostns-only")
    try:
        assert first.balancing()["podLB"] is True
        first.terminate()
        second = Agent(cluster, "all", generation=2)
    except BaseException:
        first.stop()
        raise
    try:
        assert second.balancing() == {"socketLB": "every namespace", "socketLBExcluded": 0,
                                      "lbMode": "snat", "podLB": False, "xdp": {}}
        car = Sidecar(cluster, n0.pods[0].ns, n0.cgroup)
        try:
            for vip in (CIP4, CIP6):
                res = client(cluster, n0.pods[0].ns, vip, 80, "tcp", 40)
                assert not res.errors and len(res.counts) == 3, res
            assert car.records(1, timeout=1) == []  # the socket LB has them again
        finally:
            car.stop()
    finally:
        second.stop()
