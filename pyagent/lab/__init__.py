"""A throw-away lab of network namespaces, a private cgroup and a private bpffs.

Used by the demo, the kernel tests and the benchmarks. Everything it creates
carries a unique prefix and is removed by `close()`, also after failures and
also when a previous run crashed (`Lab.sweep()`): nothing here ever touches the
root network namespace's interfaces or the root cgroup.

Topology (one node):

    node netns: br0 10.244.0.1/24 fd00:244::1/64   <- clients run here, in lab.cgroup
      |-- veth -- pod netns podN: eth0 10.244.0.(10+N) fd00:244::(10+N)
                  identity servers on the TCP/UDP ports asked for
"""

from __future__ import annotations

from pyagent.lab.single_node import ClientResult, Lab, Pod, cgroup2_mount

__all__ = ["ClientResult", "Lab", "Pod", "cgroup2_mount"]
