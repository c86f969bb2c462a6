"""Migrating from kube-proxy: `pyagent run` notices what kube-proxy left in
the node (one log line), `pyagent cleanup --kube-proxy` and `pyagent run
--cleanup` (kube-proxy's own flag) remove it as `kube-proxy --cleanup`
would, a second run is a no-op, and nothing else in the network namespace is
touched: kubelet's chains, a Docker-like NAT rule, an SSH accept, another
nftables table, another IPVS virtual server.

Each of kube-proxy's modes is imitated in a fresh network namespace with the
chains, tables and IPVS state it makes (names and jump comments as in
kube-proxy's proxiers); iptables in both backends. IPVS needs a kernel with
it (marker `vm`: run under vagrant/qemu-run)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

# kube-proxy's iptables mode (nat, filter, mangle) plus kubelet's and others'.
KUBE_PROXY_NAT = """\
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SVC-ERIFXISQEPQ2CFDN - [0:0]
:KUBE-SEP-IT2ZTR26TO4XFPTO - [0:0]
:KUBE-EXT-7EJNTS7AENER2WX5 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-ERIFXISQEPQ2CFDN
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j KUBE-EXT-7EJNTS7AENER2WX5
-A KUBE-EXT-7EJNTS7AENER2WX5 -j KUBE-MARK-MASQ
-A KUBE-EXT-7EJNTS7AENER2WX5 -j KUBE-SVC-ERIFXISQEPQ2CFDN
-A KUBE-SVC-ERIFXISQEPQ2CFDN -m comment --comment "kube-system/kube-dns:dns -> 10.244.0.5:53" -j KUBE-SEP-IT2ZTR26TO4XFPTO
-A KUBE-SEP-IT2ZTR26TO4XFPTO -s 10.244.0.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-IT2ZTR26TO4XFPTO -p udp -m udp -j DNAT --to-destination 10.244.0.5:53
"""  # noqa: E501 (iptables-save lines, verbatim)
OTHERS_NAT = """\
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
"""
KUBE_PROXY_FILTER = """\
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "default/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
"""  # noqa: E501 (iptables-save lines, verbatim)
OTHERS_FILTER = """\
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:MYCHAIN - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A MYCHAIN -s 192.0.2.0/24 -j ACCEPT
"""  # noqa: E501 (iptables-save lines, verbatim)
KUBE_PROXY_MANGLE = ":KUBE-PROXY-CANARY - [0:0]\n"
OTHERS_MANGLE = ":KUBE-KUBELET-CANARY - [0:0]\n"

KUBE_PROXY_NFT = """\
table ip kube-proxy {
  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
  chain services { ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.0.5:8080; }
  chain mark-for-masquerade { meta mark set meta mark | 0x00004000; }
}
table ip6 kube-proxy {
  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
  chain services { }
}
"""
OTHERS_NFT = """\
table inet keepme {
  chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }
}
"""


V6 = (("10.96.0.10/32", "fd00:96::a/128"), ("10.96.0.20/32", "fd00:96::14/128"),
      ("10.244.0.5/32", "fd00:244::5/128"), ("10.244.0.5:53", "[fd00:244::5]:53"),
      ("! -s 127.0.0.0/8 -d 127.0.0.0/8", "! -s ::1/128 -d ::1/128"),
      ("icmp-port-unreachable", "icmp6-port-unreachable"), ("192.0.2.0/24", "2001:db8::/64"))


def for_family(text: str, family: int) -> str:
    if family == 6:
        for a, b in V6:
            text = text.replace(a, b)
    return text


def restore_text(tables: dict[str, str]) -> str:
    return "".join(f"*{t}\n{body}COMMIT\n" for t, body in tables.items())


class Netns:
    def __init__(self) -> None:
        self.name = f"pal-mig-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *cmd: str, stdin: str | None = None, check: bool = True
             ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], input=stdin,
                              capture_output=True, text=True, check=check)

    def pyagent(self, *args: str) -> subprocess.CompletedProcess:
        return self.exec(sys.executable, "-m", "pyagent", *args, check=False)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = Netns()
    try:
        yield n
    finally:
        n.close()


def saved(ns: Netns, cmd: str) -> str:
    """iptables-save output without comments and counters, sorted by line."""
    out = ns.exec(cmd, check=False).stdout
    lines = [re.sub(r"\[\d+:\d+\]", "", line).strip() for line in out.splitlines()
             if line and not line.startswith("#")]
    return "\n".join(sorted(lines))


def load_iptables(ns: Netns, backend: str) -> None:
    for family, cmd in ((4, f"iptables-{backend}-restore"), (6, f"ip6tables-{backend}-restore")):
        nat_others = OTHERS_NAT if family == 4 else ":DOCKER - [0:0]\n"
        ns.exec(cmd, stdin=for_family(restore_text({
            "nat": KUBE_PROXY_NAT + nat_others, "filter": KUBE_PROXY_FILTER + OTHERS_FILTER,
            "mangle": KUBE_PROXY_MANGLE + OTHERS_MANGLE}), family))


def expected_iptables(ns: Netns, backend: str, family: int) -> str:
    """What a namespace holding only the others' rules saves as."""
    other = Netns()
    try:
        cmd = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}"
        other.exec(f"{cmd}-restore", stdin=for_family(restore_text({
            "nat": OTHERS_NAT if family == 4 else ":DOCKER - [0:0]\n", "filter": OTHERS_FILTER,
            "mangle": OTHERS_MANGLE}), family))
        return saved(other, f"{cmd}-save")
    finally:
        other.close()


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_mode_leftovers(ns: Netns, backend: str, tmp_path: Path) -> None:
    load_iptables(ns, backend)
    before = {f: saved(ns, f"{c}-{backend}-save") for f, c in ((4, "iptables"),
                                                                 (6, "ip6tables"))}
    assert "KUBE-SVC-ERIFXISQEPQ2CFDN" in before[4]
    found = ns.pyagent("cleanup", "--kube-proxy")
    assert found.returncode == 0, found.stderr
    assert "removed" in found.stdout and "kept" not in found.stdout, found.stdout
    for family, cmd in ((4, "iptables"), (6, "ip6tables")):
        after = saved(ns, f"{cmd}-{backend}-save")
        assert after == expected_iptables(ns, backend, family), (family, after)
    again = ns.pyagent("cleanup", "--kube-proxy")
    assert again.stdout.strip() == "kube-proxy: nothing to clean", again.stdout
    assert saved(ns, f"iptables-{backend}-save") == expected_iptables(ns, backend, 4)


def test_a_chain_someone_else_jumps_to_is_kept(ns: Netns) -> None:
    """Removing a chain that a foreign rule still uses would fail (or break
    that rule): it stays, and the output says so."""
    ns.exec("iptables-nft-restore", stdin=restore_text({
        "nat": ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n"
               "-A PREROUTING -j KUBE-SERVICES\n-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ\n"
               "-A KUBE-SERVICES -j KUBE-MARK-MASQ\n"}))
    out = ns.pyagent("cleanup", "--kube-proxy").stdout
    assert "kept KUBE-MARK-MASQ" in out, out
    nat = saved(ns, "iptables-nft-save")
    assert "KUBE-SERVICES" not in nat and ":KUBE-MARK-MASQ" in nat
    assert "-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ" in nat


def test_nftables_mode_leftovers_and_run_cleanup_flag(ns: Netns) -> None:
    ns.exec("nft", "-f", "-", stdin=KUBE_PROXY_NFT + OTHERS_NFT)
    keep = ns.exec("nft", "list", "table", "inet", "keepme").stdout
    # kube-proxy's own flag on `pyagent run`: clean up and exit
    res = ns.pyagent("run", "--cleanup")
    assert res.returncode == 0, res.stderr
    assert "removed table ip kube-proxy" in res.stdout, res.stdout
    assert "removed table ip6 kube-proxy" in res.stdout, res.stdout
    tables = ns.exec("nft", "list", "tables").stdout
    assert "kube-proxy" not in tables and "inet keepme" in tables
    assert ns.exec("nft", "list", "table", "inet", "keepme").stdout == keep
    assert ns.pyagent("run", "--cleanup").stdout.strip() == "kube-proxy: nothing to clean"


def test_run_says_so_in_one_line(tmp_path: Path) -> None:
    """The agent starts (here in the namespace lab) and names what it found."""
    from pyagent.lab import Lab

    with Lab(pods=0) as lab:
        subprocess.run(["ip", "netns", "exec", lab.node_ns, "iptables-nft-restore"],
                       input=restore_text({"nat": KUBE_PROXY_NAT, "filter": KUBE_PROXY_FILTER}),
                       text=True, check=True)
        subprocess.run(["ip", "netns", "exec", lab.node_ns, "nft", "-f", "-"],
                       input=KUBE_PROXY_NFT, text=True, check=True)
        mdir = lab.tmp / "m"
        mdir.mkdir()
        log = lab.tmp / "agent.log"
        bpffs = str(lab.bpffs / "pyagent")
        proc = lab.agent(["run", "--manifests", str(mdir), "--node-name", "n1",
                          "--cgroup", str(lab.cgroup), "--bpffs", bpffs,
                          "--healthz-bind-address", "127.0.0.1:0",
                          "--metrics-bind-address", "127.0.0.1:0"], stderr=log.open("w"))
        try:
            deadline = time.monotonic() + 60
            # the leftovers are looked for beside the start, not before it
            while not ("pyagent running" in (text := log.read_text())
                       and "kube-proxy's state" in text) and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            lab.agent(["cleanup", "--bpffs", bpffs, "--cgroup", str(lab.cgroup)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=60)
        lines = [line for line in log.read_text().splitlines() if "kube-proxy's state" in line]
        assert len(lines) == 1, log.read_text()
        assert "KUBE-* chains (8 in nat, 6 in filter)" in lines[0], lines[0]
        assert "nftables table ip kube-proxy" in lines[0] and "ip6 kube-proxy" in lines[0]
        assert "pyagent cleanup --kube-proxy" in lines[0]


IPVS_SETUP = textwrap.dedent("""\
    import socket
    from pyroute2 import IPRoute, IPVS, IPVSService, IPVSDest
    with IPRoute() as ipr:
        ipr.link("add", ifname="kube-ipvs0", kind="dummy")
        idx = ipr.link_lookup(ifname="kube-ipvs0")[0]
        ipr.addr("add", index=idx, address="10.96.0.1", prefixlen=32)
        ipr.link("add", ifname="eth9", kind="dummy")
        e = ipr.link_lookup(ifname="eth9")[0]
        ipr.addr("add", index=e, address="192.168.7.2", prefixlen=24)
        ipr.link("set", index=e, state="up")
    ipvs = IPVS()
    for addr, port in (("10.96.0.1", 443), ("192.168.7.2", 30080), ("192.0.2.50", 80)):
        svc = IPVSService(af=socket.AF_INET, addr=addr, port=port, protocol=6,
                          sched_name="rr", netmask="255.255.255.255",
                          flags={"flags": 0, "mask": 0xffff}, timeout=0)
        ipvs.service("add", service=svc)
        ipvs.dest("add", service=svc, dest=IPVSDest(addr="10.244.0.5", port=6443,
                                                    fwd_method=0, weight=1,
                                                    addr_family=socket.AF_INET))
    """)


def _ipvs_available() -> bool:
    """Collected only where the kernel has IPVS (the qemu VM): a skipped root
    test fails CI (PYAGENT_REQUIRE_KERNEL), as in test_modes.py."""
    if Path("/proc/net/ip_vs").exists():
        return True
    return subprocess.run(["modprobe", "-n", "ip_vs"], capture_output=True,
                          check=False).returncode == 0


@pytest.mark.vm
def _test_ipvs_mode_leftovers(ns: Netns) -> None:
    ns.exec(sys.executable, "-c", IPVS_SETUP)
    ns.exec("iptables-nft-restore", stdin=restore_text({
        "nat": ":KUBE-SERVICES - [0:0]\n:KUBE-LOAD-BALANCER - [0:0]\n:KUBE-NODE-PORT - [0:0]\n"
               "-A PREROUTING -m comment --comment \"kubernetes service portals\" "
               "-j KUBE-SERVICES\n"
               "-A KUBE-SERVICES -j KUBE-NODE-PORT\n",
        "filter": ":KUBE-IPVS-FILTER - [0:0]\n-A INPUT -j KUBE-IPVS-FILTER\n"}))
    out = ns.pyagent("cleanup", "--kube-proxy").stdout
    assert "IPVS: removed 2 virtual servers" in out and "removed kube-ipvs0" in out, out
    left = ns.exec("cat", "/proc/net/ip_vs").stdout
    assert "C0000232:0050" in left  # 192.0.2.50:80, not kube-proxy's, still there
    assert "0A600001" not in left and "C0A80702:7580" not in left
    assert "kube-ipvs0" not in ns.exec("ip", "link").stdout
    assert "eth9" in ns.exec("ip", "link").stdout
    assert ns.pyagent("cleanup", "--kube-proxy").stdout.strip() == "kube-proxy: nothing to clean"


if _ipvs_available():
    test_ipvs_mode_leftovers = _test_ipvs_mode_leftovers
