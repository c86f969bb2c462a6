"""Node identity as kube-proxy derives it, and the image's kernel headers
(pure parts; the lab tests run them for real)."""

from __future__ import annotations

from pathlib import Path

from pyagent.core import node_object
from pyagent.node import kheaders, nodeinfo
from pyagent.node.nodeinfo import Link


def node(*addrs: tuple[str, str], **spec: object) -> dict:
    return {"metadata": {"name": "n"}, "spec": spec,
            "status": {"addresses": [{"type": t, "address": a} for t, a in addrs]}}


def test_node_ips_internal_first_one_per_family() -> None:
    n = node(("ExternalIP", "203.0.113.5"), ("Hostname", "n"), ("InternalIP", "10.0.0.5"),
             ("InternalIP", "10.0.0.6"), ("ExternalIP", "2001:db8::5"),
             ("InternalIP", "fd00::5"))
    assert node_object.node_ips(n) == ("10.0.0.5", "fd00::5")
    assert node_object.node_ips(node(("ExternalIP", "203.0.113.5"))) == ("203.0.113.5",)
    assert node_object.node_ips(None) == ()
    assert node_object.node_ips(node(("InternalIP", "bogus"), ("InternalIP", "10.0.0.7"))) == (
        "10.0.0.7",)


def test_bind_address_is_the_primary_of_its_family() -> None:
    assert node_object.primary_ips(("10.0.0.5", "fd00::5"), "192.168.1.1") == (
        "192.168.1.1", "fd00::5")
    assert node_object.primary_ips(("10.0.0.5", "fd00::5"), "fd00::9") == ("fd00::9", "10.0.0.5")
    assert node_object.primary_ips(("10.0.0.5",), "0.0.0.0") == ("10.0.0.5",)


def test_pod_cidrs() -> None:
    assert node_object.pod_cidrs(node(podCIDRs=["10.244.1.0/24", "fd00:1::/64"])) == (
        "10.244.1.0/24", "fd00:1::/64")
    assert node_object.pod_cidrs(node(podCIDR="10.244.2.0/24")) == ("10.244.2.0/24",)
    assert node_object.pod_cidrs(node()) == ()


LINKS = [Link(1, "lo", "", None, ("127.0.0.1", "::1"), False),
         Link(2, "eth0", "", None, ("192.168.1.10", "fe80::1"), True),
         Link(3, "cni0", "bridge", None, ("10.244.0.1",), False),
         Link(4, "veth1", "veth", 3, (), False),
         Link(5, "kube-ipvs0", "dummy", None, ("10.96.0.1",), False),
         Link(6, "lab0", "veth", None, ("192.168.50.10", "fd00:50::a"), False)]


def test_local_addresses_leave_out_loopback_link_local_and_vips() -> None:
    assert nodeinfo.local_addresses(LINKS) == ("192.168.1.10", "10.244.0.1", "192.168.50.10",
                                               "fd00:50::a")


def test_default_interfaces() -> None:
    assert nodeinfo.default_interfaces(["192.168.1.10"], LINKS)[0] == ("eth0",)
    ifaces, notes = nodeinfo.default_interfaces(["10.244.0.1", "192.168.50.10"], LINKS)
    assert ifaces == ()
    assert "cni0 holds node IP 10.244.0.1 but is a bridge" in notes[0]
    assert "lab0 holds node IP 192.168.50.10 but is a veth without the default route" in notes[1]
    # an address no interface holds (a cloud NAT IP): the default route's interface
    assert nodeinfo.default_interfaces(["203.0.113.9"], LINKS)[0] == ("eth0",)


def test_fetch_node_polls_until_ready() -> None:
    answers = iter([RuntimeError("refused"), None, node(), node(("InternalIP", "10.0.0.1"))])

    def get() -> dict | None:
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a
    got = nodeinfo.fetch_node(get, lambda n: bool(node_object.node_ips(n)), timeout=10,
                              sleep=lambda _: None)
    assert node_object.node_ips(got) == ("10.0.0.1",)


def test_pod_cidr_guard_calls_back_on_a_change() -> None:
    seen: list[str] = []

    class Sink:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def replace(self, *a: object, **kw: object) -> None:
            self.calls.append(f"replace {sorted(kw)}")

        def report(self, problems: object) -> None:
            self.calls.append("report")

        def upsert(self, *a: object) -> None:
            self.calls.append("upsert")

        def delete(self, *a: object) -> None: ...
    sink = Sink()
    guard = nodeinfo.PodCIDRGuard(sink, "n", ("10.244.1.0/24",), seen.append)
    guard.replace("Node", [node(podCIDRs=["10.244.1.0/24"])], refused={}, origins={})
    guard.report([])
    assert sink.calls == ["replace ['origins', 'refused']", "report"]  # passed on whole
    guard.upsert("Node", {**node(podCIDRs=["10.244.1.0/24"]), "metadata": {"name": "other"}})
    assert seen == []
    guard.upsert("Node", node(podCIDRs=["10.244.9.0/24"]))
    assert seen and "10.244.9.0/24" in seen[0]


def test_kernel_headers_linked_from_the_image_when_the_node_has_none(tmp_path: Path) -> None:
    modules, host, src = tmp_path / "lib-modules", tmp_path / "host-modules", tmp_path / "src"
    (host / "6.9.0-test" / "kernel").mkdir(parents=True)
    (host / "6.9.0-test" / "modules.dep").write_text("")
    (host / "6.9.0-test" / "build").symlink_to("/usr/src/not-in-the-pod")  # dangling here
    for tree in ("linux-headers-6.1.0-9-amd64", "linux-headers-6.1.0-9-common",
                 "linux-headers-6.1.0-10-amd64", "linux-headers-6.1.0-10-common"):
        (src / tree / "include").mkdir(parents=True)
    what = kheaders.ensure("6.9.0-test", str(host), modules, src)
    assert "using the image's linux-headers-6.1.0-10-amd64" in what
    mod = modules / "6.9.0-test"
    assert (mod / "build").resolve() == src / "linux-headers-6.1.0-10-amd64"
    assert (mod / "source").resolve() == src / "linux-headers-6.1.0-10-common"
    assert (mod / "kernel").resolve() == host / "6.9.0-test" / "kernel"  # modprobe still works
    assert kheaders.ensure("6.9.0-test", str(host), modules, src).startswith(
        "kernel headers: ")  # idempotent
    # the node's own headers, when the pod can see them, win
    (tmp_path / "node-headers" / "include").mkdir(parents=True)
    (host / "6.9.1").mkdir()
    (host / "6.9.1" / "build").symlink_to(tmp_path / "node-headers")
    assert "the node's" in kheaders.ensure("6.9.1", str(host), modules, src)
    # outside the image (no PYAGENT_HOST_MODULES) nothing is touched
    assert "none at" in kheaders.ensure("6.9.2", "", modules, src)
    assert not (modules / "6.9.2").exists()
