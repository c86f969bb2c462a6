"""North-south (TC) benchmarks, in a two-node lab (pyagent/lab/cluster.py):

  1. per-packet cost of the programs (BPF_PROG_TEST_RUN): ingress without a
     frontend, on an established flow and on a DSR flow's SYN, at TC and at
     XDP (lb_xdp_ingress, which leaves DSR options to TC: its SYN figure is
     the hand-over plus TC's), egress without and with a rewrite. Each
     figure is the median of single runs on fresh copies of the frame (a
     repeated run would process its own output: after the first pass an
     established flow's frame no longer goes to the frontend)
  2. TCP connections per second from the external client: to a server of the
     node itself and directly to a pod routed through the node (baselines:
     the programs run but translate nothing), through
     a NodePort to a local pod (eTP=Local, DNAT only), through a NodePort
     to a pod on the other node (eTP=Cluster: DNAT + masquerade + forward),
     and the same by DSR (both nodes in --bpf-lb-mode dsr: DNAT + option,
     the reply straight from node1), against the remote pod reached
     directly through node0 (the same asymmetric path, untranslated); then
     the three NodePort paths again with lb_xdp_ingress on node0's uplink
     (native XDP on the veth)
  3. the ratios the targets are stated in: NodePort local / direct to the
     pod (>= 0.98), NodePort remote by DSR / direct to the remote pod (>= 0.95)

    .venv/bin/python -m tests.bench.bench_north_south [--connects 3000] [--runs 5]
        [--json] [--out docs/bench]   # north_south.json + north_south.png there

--connects stays below what masquerade can take in one burst: a
masqueraded flow holds one of the 4,535 SNAT ports of its backend for the
10 s closing timeout after its FIN (DSR holds none).

With --runs N every figure is the median of N runs (each run measures all of
them, so the ratios compare one machine state). Reports numbers only;
nothing asserts on them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ebpf import libbpf
from pyagent.dataplanes.ebpf import accel, socket_lb, tc
from pyagent.dataplanes.ebpf import layout as L
from pyagent.dataplanes.ebpf import packet as P
from pyagent.lab.cluster import Cluster

CONNECT_SNIPPET = """
import socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
for _ in range(n):
    with socket.create_connection((dst, port), timeout=3) as s:
        s.recv(200)
print(n / (time.perf_counter() - t))
"""
CAPS = socket_lb.Capacities(4096, 4096, 4096, 64, 256, 4096)


def put(lb: tc.TcLB, vip: str, port: int, backends: list[tuple[str, bool]], flags: int,
        rev: int) -> None:
    maps = lb.lb_maps
    for slot, (ip, local) in enumerate(backends, 1):
        bid = rev * 100 + slot
        maps.lb4_backends.set(ctypes.c_uint32(bid), L.backend_value(
            ip, 8080, "TCP", flags=L.BACKEND_F_LOCAL if local else 0))
        maps.lb4_services.set(L.service_key(vip, port, "TCP", slot, L.SCOPE_EXTERNAL),
                              L.LbService(backend_id=bid))
    maps.lb4_services.set(L.service_key(vip, port, "TCP", scope=L.SCOPE_EXTERNAL),
                          L.LbService(count=len(backends), rev_nat_id=rev, flags=flags))


def per_packet(samples: int) -> dict[str, float]:
    with tc.load(None, CAPS, tc.TcCapacities(4096, 64), xdp=True) as lb:
        tc.write_node_config(lb.maps, "192.168.50.10")
        put(lb, "192.168.50.10", 30080, [("10.244.1.10", False)],
            L.ServiceFlag.NODE_PORT | L.ServiceFlag.MASQUERADE, 1)
        ing, eg = lb.prog_fds[tc.PROG_NETDEV_INGRESS], lb.prog_fds[tc.PROG_EGRESS]
        xdp = lb.prog_fds[tc.PROG_XDP]
        flow = P.build("203.0.113.2", "192.168.50.10", "TCP", 40000, 30080, flags="A")
        other = P.build("203.0.113.2", "192.168.50.99", "TCP", 40000, 80, flags="A")
        dnat = libbpf.prog_test_run(ing, flow).data_out

        def ns(fd: int, frame: bytes) -> float:
            return statistics.median(libbpf.prog_test_run(fd, frame).duration_ns
                                     for _ in range(samples))

        out = {"ingress_no_frontend_ns": ns(ing, other), "ingress_established_ns": ns(ing, flow),
               "xdp_no_frontend_ns": ns(xdp, other), "xdp_established_ns": ns(xdp, flow),
               "egress_untouched_ns": ns(eg, other), "egress_masquerade_ns": ns(eg, dnat)}
        # DSR: a (retransmitted) SYN of a DSR flow gets the option every time
        tc.write_node_config(lb.maps, "192.168.50.10", lb_mode="dsr")
        syn = P.build("203.0.113.3", "192.168.50.10", "TCP", 40001, 30080, flags="S")
        libbpf.prog_test_run(ing, syn)
        out["ingress_dsr_syn_ns"] = ns(ing, syn)
        # at XDP: handed to TC untouched, which then adds the option
        out["xdp_dsr_syn_ns"] = ns(xdp, syn) + out["ingress_dsr_syn_ns"]
        return out


def connects(c: Cluster, dst: str, port: int, n: int) -> float:
    r = c.run([sys.executable, "-c", CONNECT_SNIPPET, dst, str(port), str(n)], timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return round(float(r.stdout), 1)


def fresh(lb: tc.TcLB, backend_ip: str) -> None:
    """Forget node0's flows to the remote pod: closed ones keep their
    masquerade port for 10 s, and 4,536 ports serve one backend
    (docs/north-south.md), so each figure starts with all of them."""
    tc.delete_flows_to(lb.maps, backend_ip, 8080, "TCP")


def lab(n: int) -> dict[str, float]:
    with Cluster(nodes=2, pods_per_node=1) as c:
        c.wire_checksums()  # as a NIC's traffic: XDP's checksum updates assume it
        lbs = []
        try:
            for node in c.nodes:
                lbs.append(tc.setup(str(node.bpffs), [node.uplink], node.pod_links, node.ns,
                                    node.ip4, node.ip6, CAPS, tc.TcCapacities(65536, 64),
                                    xdp=True))
            node0, node1 = c.nodes
            put(lbs[0], node0.ip4, 30080, [(node0.pods[0].ip4, True)],
                L.ServiceFlag.NODE_PORT | L.ServiceFlag.LOCAL_ETP, 1)
            put(lbs[0], node0.ip4, 30081, [(node1.pods[0].ip4, False)],
                L.ServiceFlag.NODE_PORT | L.ServiceFlag.MASQUERADE, 2)
            # DSR needs the NodePort on node1 too (it only honours its own frontends)
            put(lbs[0], node0.ip4, 30082, [(node1.pods[0].ip4, False)],
                L.ServiceFlag.NODE_PORT | L.ServiceFlag.MASQUERADE, 3)
            put(lbs[1], node1.ip4, 30082, [(node1.pods[0].ip4, True)],
                L.ServiceFlag.NODE_PORT | L.ServiceFlag.MASQUERADE, 3)
            server = c.popen([sys.executable, "-m", "pyagent.lab.server", "--name", "host",
                              "--tcp", "7000"], ns=node0.ns, stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            # the pod itself, routed through node0 without any translation
            c.run(["ip", "route", "add", f"{node0.pods[0].ip4}/32", "via", node0.ip4])
            c.run(["ip", "route", "add", f"{node1.pods[0].ip4}/32", "via", node0.ip4])
            out = {"node_server_conn_per_s": connects(c, node0.ip4, 7000, n),
                   "direct_to_pod_conn_per_s": connects(c, node0.pods[0].ip4, 8080, n),
                   "direct_to_remote_pod_conn_per_s": connects(c, node1.pods[0].ip4, 8080, n),
                   "nodeport_local_conn_per_s": connects(c, node0.ip4, 30080, n),
                   "nodeport_masq_remote_conn_per_s": connects(c, node0.ip4, 30081, n)}
            remote = node1.pods[0].ip4
            for lb, node in zip(lbs, c.nodes, strict=True):
                tc.write_node_config(lb.maps, node.ip4, node.ip6, lb_mode="dsr")
            fresh(lbs[0], remote)
            out["nodeport_dsr_remote_conn_per_s"] = connects(c, node0.ip4, 30082, n)
            (xdp,) = accel.apply("native", [node0.uplink], lbs[0].prog_fds[tc.PROG_XDP],
                                 netns=node0.ns)
            assert xdp.mode == "native", xdp
            fresh(lbs[0], remote)
            out["xdp_nodeport_dsr_remote_conn_per_s"] = connects(c, node0.ip4, 30082, n)
            tc.write_node_config(lbs[0].maps, node0.ip4, node0.ip6)
            out["xdp_nodeport_local_conn_per_s"] = connects(c, node0.ip4, 30080, n)
            fresh(lbs[0], remote)
            out["xdp_nodeport_masq_remote_conn_per_s"] = connects(c, node0.ip4, 30081, n)
            return out
        finally:
            for lb in lbs:
                lb.close()


BARS = [("direct_to_pod_conn_per_s", "direct to the pod"),
        ("nodeport_local_conn_per_s", "NodePort, local pod"),
        ("xdp_nodeport_local_conn_per_s", "NodePort, local pod, XDP"),
        ("direct_to_remote_pod_conn_per_s", "direct to the remote pod"),
        ("nodeport_masq_remote_conn_per_s", "NodePort, remote, SNAT"),
        ("xdp_nodeport_masq_remote_conn_per_s", "NodePort, remote, SNAT, XDP"),
        ("nodeport_dsr_remote_conn_per_s", "NodePort, remote, DSR"),
        ("xdp_nodeport_dsr_remote_conn_per_s", "NodePort, remote, DSR, XDP")]
PACKETS = [("ingress_no_frontend_ns", "TC ingress, no frontend"),
           ("xdp_no_frontend_ns", "XDP, no frontend"),
           ("ingress_established_ns", "TC ingress, established"),
           ("xdp_established_ns", "XDP, established"),
           ("ingress_dsr_syn_ns", "TC ingress, DSR SYN"),
           ("xdp_dsr_syn_ns", "XDP -> TC, DSR SYN"),
           ("egress_untouched_ns", "egress, untouched"),
           ("egress_masquerade_ns", "egress, masquerade")]


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs, then the ratios of those medians."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    local, remote = out["direct_to_pod_conn_per_s"], out["direct_to_remote_pod_conn_per_s"]
    out["nodeport_local_vs_direct"] = round(out["nodeport_local_conn_per_s"] / local, 3)
    out["nodeport_dsr_remote_vs_direct"] = round(out["nodeport_dsr_remote_conn_per_s"] / remote, 3)
    out["nodeport_masq_remote_vs_direct"] = round(
        out["nodeport_masq_remote_conn_per_s"] / remote, 3)
    out["xdp_nodeport_local_vs_direct"] = round(out["xdp_nodeport_local_conn_per_s"] / local, 3)
    out["xdp_nodeport_dsr_remote_vs_direct"] = round(
        out["xdp_nodeport_dsr_remote_conn_per_s"] / remote, 3)
    return out


def plot(res: dict[str, float], meta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tests.bench.report_plot import _finish, footer

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    names = [label for _, label in BARS]
    vals = [res[k] for k, _ in BARS]
    bars = a.barh(names, vals, color=["C7", "C4", "C9", "C7", "C1", "C9", "C2", "C9"])
    for bar, (k, _) in zip(bars, BARS, strict=True):
        base = ("direct_to_pod_conn_per_s" if "local" in k or k.startswith("direct_to_pod")
                else "direct_to_remote_pod_conn_per_s")
        a.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
               f" {res[k]:,.0f}/s  {res[k] / res[base]:.2f}x", va="center", fontsize=8)
    a.invert_yaxis()
    a.set_xlim(0, max(vals) * 1.35)
    a.set_xlabel("new TCP connections per second (higher is better)")
    a.set_title("external client -> node0 (ratio: against direct, same path)")
    names = [label for _, label in PACKETS]
    vals = [res[k] for k, _ in PACKETS]
    bars = b.barh(names, vals, color=["C9" if k.startswith("xdp") else "C2"
                                      for k, _ in PACKETS])
    for bar, v in zip(bars, vals, strict=True):
        b.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.0f} ns",
               va="center", fontsize=8)
    b.invert_yaxis()
    b.set_xlim(0, max(vals) * 1.3)
    b.set_xlabel("ns per packet, BPF_PROG_TEST_RUN (lower is better)")
    b.set_title("program cost per packet (TC, XDP)")
    return _finish(fig, footer(meta, []), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connects", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=20_000,
                    help="single runs per per-packet figure (their median)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="write north_south.json and north_south.png here")
    args = ap.parse_args()
    Cluster.sweep()
    res = median_of([{**per_packet(args.samples), **lab(args.connects)}
                     for _ in range(args.runs)])
    if args.out:
        meta = {"command": " ".join([".venv/bin/python -m tests.bench.bench_north_south",
                                     *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d"), "kernel": os.uname().release,
                "cpus": os.cpu_count()}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "north_south.json").write_text(json.dumps({**meta, "results": res},
                                                              indent=2) + "\n")
        plot(res, meta, args.out / "north_south.png")
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:34} {v}")


if __name__ == "__main__":
    main()
