"""Kernel feature probing and the socket LB's documented fallbacks.

Each fallback test builds the variant for a kernel that lacks one feature
(the probe's answer forced), loads and attaches it in the objects
test_sock_lb.py creates (cgroup, netns, bpffs), and checks what an
application sees. Under a kernel that really lacks the feature (5.10 in
qemu: no bpf_set_retval) the same tests run with the real probe too.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os

import pytest

from tests.test_sock_lb import (
    BACKENDS4,
    TCP_PORT,
    UDP_PORT,
    VIP4,
    Env,
    del_service,
    put_service,
    sweep_stale,
    tcp,
)

CAPS = (256, 256, 256, 256, 64, 256)


def _variant(**missing: bool):
    from pyagent.dataplanes.ebpf import socket_lb

    real = socket_lb.kernel_variant().features
    return socket_lb.choose_variant(dataclasses.replace(real, **missing))


@pytest.fixture
def lab():
    sweep_stale()
    e = Env()
    try:
        e.start_server()
        yield e
    finally:
        e.close()


def _load(e: Env, variant):
    from pyagent.dataplanes.ebpf import socket_lb

    e.lb = socket_lb.load(e.bpffs, socket_lb.Capacities(*CAPS), variant=variant)
    socket_lb.attach(e.lb, e.bpffs, e.cgroup)
    return e.lb


# ---------------------------------------------------------------- the probe


@pytest.mark.root
def test_probe_answers_from_the_kernel():
    from ebpf import probe

    f = probe.probe()
    # What every kernel pyagent supports (5.10 and later) has.
    assert f.connect and f.sendmsg and f.socket_cookie and f.lru_hash and f.hash_of_maps
    # An unknown helper and an unknown attach type are absent, not errors.
    probe.HELPERS["pyagent_test_bogus"] = 4000
    probe.ATTACH_TYPES["pyagent_test_bogus"] = (250, 18)
    try:
        assert not probe.helper_supported("pyagent_test_bogus", 18, 10)
        assert not probe.attach_type_supported("pyagent_test_bogus")
    finally:
        del probe.HELPERS["pyagent_test_bogus"], probe.ATTACH_TYPES["pyagent_test_bogus"]
    # The probe and the kernel agree: the socket LB the variant builds loads.
    assert probe.helper_supported("get_socket_cookie", 18, 10)


@pytest.mark.root
def test_probe_lifts_the_memlock_limit_that_pre_5_11_kernels_charge():
    """On 5.10 a process with the default 64 KiB RLIMIT_MEMLOCK got EPERM
    from every probe once the agent's maps (charged to root) existed, so an
    agent could not start; the probe lifts the limit as BCC and libbpf do:
    to unlimited with CAP_SYS_RESOURCE (root in the qemu VM), else to the
    hard limit (a container without it, as on this host)."""
    import subprocess
    import sys

    code = ("import resource\n"
            "hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]\n"
            "resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, hard))\n"
            "from ebpf import probe\n"
            "probe.probe()\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)\n"
            "print(soft == hard and (soft == resource.RLIM_INFINITY or soft > 65536))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


@pytest.mark.root
def test_probe_answers_can_be_forced(monkeypatch):
    from ebpf import probe

    monkeypatch.setenv(probe.OVERRIDE_ENV, "set_retval=0, cgroup_links=0")
    f = probe.probe()
    assert not f.set_retval and not f.cgroup_links
    assert f.overridden == ("cgroup_links", "set_retval")
    assert {"set_retval", "cgroup_links"} <= set(f.missing())
    monkeypatch.setenv(probe.OVERRIDE_ENV, "set_retval=maybe")
    with pytest.raises(ValueError, match="set_retval=maybe"):
        probe.probe()


def test_variant_for_a_kernel_without_anything_optional():
    from ebpf import probe
    from pyagent.dataplanes.ebpf import socket_lb

    bare = probe.Features(recvmsg=False, getpeername=False, sock_release=False,
                          set_retval=False, netns_cookie=False, cgroup_links=False)
    v = socket_lb.choose_variant(bare)
    assert v.defines == {"LB_HAVE_SET_RETVAL": 0, "LB_HAVE_NETNS_COOKIE": 0,
                         "LB_HAVE_SOCK_RELEASE": 0}
    assert [h.func for h in v.hooks] == ["lb4_connect", "lb4_sendmsg", "lb6_connect",
                                         "lb6_sendmsg"]
    assert v.legacy_attach and len(v.degraded) == 6
    with pytest.raises(RuntimeError, match="connect/sendmsg"):
        socket_lb.choose_variant(probe.Features(connect=False))


# ---------------------------------------------------------------- fallbacks


@pytest.mark.root
def test_without_set_retval_a_refused_connect_fails_at_once_with_eperm(lab):
    from pyagent.dataplanes.ebpf import layout as L

    lb = _load(lab, _variant(set_retval=False))
    drop = int(L.ServiceFlag.DROP_NO_BACKEND)
    for proto in ("TCP", "UDP"):
        put_service(lb.maps, VIP4, 80, proto, [], 41)
        put_service(lb.maps, VIP4, 81, proto, [], 42, flags=drop)
    put_service(lb.maps, VIP4, 82, "TCP", [(b, TCP_PORT) for b in BACKENDS4], 43)
    try:
        *refused, served = lab.client(
            *[{"op": "errno", "dst": VIP4, "port": port, "proto": proto}
              for port in (80, 81) for proto in ("tcp", "udp")],
            tcp(VIP4, 82, 20))
    finally:
        for proto in ("TCP", "UDP"):
            del_service(lb.maps, VIP4, 80, proto, 0)
            del_service(lb.maps, VIP4, 81, proto, 0)
        del_service(lb.maps, VIP4, 82, "TCP", 3)
    # Still refused at once, and distinguishable from success; only the
    # errno is the generic one.
    assert [r["errno"] for r in refused] == ["EPERM"] * 4
    assert max(r["seconds"] for r in refused) < 0.5
    assert served["errors"] == {} and set(served["ids"]) <= set(BACKENDS4)


@pytest.mark.root
def test_without_getpeername_hooks_the_peer_is_the_backend(lab):
    lb = _load(lab, _variant(getpeername=False))
    assert "lb4_getpeername" not in lb.prog_fds
    put_service(lb.maps, VIP4, 80, "TCP", [(BACKENDS4[0], TCP_PORT)], 51)
    put_service(lb.maps, VIP4, 53, "UDP", [(BACKENDS4[0], UDP_PORT)], 52)
    try:
        t, u = lab.client(tcp(VIP4, 80, 3),
                          {"op": "udp", "dst": VIP4, "port": 53, "sockets": 1, "sends": 2})
    finally:
        del_service(lb.maps, VIP4, 80, "TCP", 1)
        del_service(lb.maps, VIP4, 53, "UDP", 1)
    assert t["ids"] == [BACKENDS4[0]] * 3
    assert {tuple(p) for p in t["peers"]} == {(BACKENDS4[0], TCP_PORT)}  # degraded
    # recvmsg is a hook of its own: unconnected UDP still sees the VIP.
    assert {tuple(f) for f in u["sockets"][0]["froms"]} == {(VIP4, 53)}


@pytest.mark.root
def test_without_cgroup_links_hooks_attach_legacy_and_restart_and_cleanup_work(lab):
    from ebpf import bpffs
    from pyagent.dataplanes.ebpf import socket_lb

    variant = _variant(cgroup_links=False)
    first = _load(lab, variant)
    hooks = [h.func for h in variant.hooks]
    before = socket_lb.attached_programs(lab.cgroup)
    assert all(len(before[f]) == 1 for f in hooks)
    assert bpffs.list_pins(socket_lb.links_dir(lab.bpffs)) == []
    put_service(first.maps, VIP4, 80, "TCP", [(BACKENDS4[1], TCP_PORT)], 61)
    first.close()
    lab.lb = None

    # A restarted agent: the new programs replace the recorded ones.
    second = socket_lb.load(lab.bpffs, socket_lb.Capacities(*CAPS), variant=variant)
    lab.lb = second
    assert all(socket_lb.attach(second, lab.bpffs, lab.cgroup).values())
    after = socket_lb.attached_programs(lab.cgroup)
    for f in hooks:
        assert len(after[f]) == 1 and after[f] != before[f]
    try:
        (r,) = lab.client(tcp(VIP4, 80, 5))
    finally:
        del_service(second.maps, VIP4, 80, "TCP", 1)
    assert r["ids"] == [BACKENDS4[1]] * 5 and {tuple(p) for p in r["peers"]} == {(VIP4, 80)}

    assert socket_lb.detach_all(lab.bpffs, lab.cgroup) == len(hooks)
    assert all(ids == [] for ids in socket_lb.attached_programs(lab.cgroup).values())
    assert socket_lb.detach_all(lab.bpffs, lab.cgroup) == 0


@pytest.mark.root
def test_without_netns_cookie_affinity_is_not_kept_at_the_socket_hooks(lab):
    from pyagent.dataplanes.ebpf import layout as L

    lb = _load(lab, _variant(netns_cookie=False))
    put_service(lb.maps, VIP4, 80, "TCP", [(b, TCP_PORT) for b in BACKENDS4], 71,
                flags=int(L.ServiceFlag.AFFINITY))
    key = L.service_key(VIP4, 80, "TCP")
    master = lb.maps.lb4_services.get(key)
    master.affinity_timeout = 600
    lb.maps.lb4_services.set(key, master)
    try:
        (r,) = lab.client(tcp(VIP4, 80, 60))
    finally:
        del_service(lb.maps, VIP4, 80, "TCP", 3)
    assert r["errors"] == {}
    assert len(set(r["ids"])) > 1  # spread: no affinity without the netns cookie


@pytest.mark.root
def test_without_sock_release_least_conn_picks_at_random(lab):
    from pyagent.dataplanes.ebpf import layout as L

    lb = _load(lab, _variant(sock_release=False))
    assert "lb_sock_release" not in lb.prog_fds
    put_service(lb.maps, VIP4, 80, "TCP", [(b, TCP_PORT) for b in BACKENDS4], 81)
    key = L.service_key(VIP4, 80, "TCP")
    master = lb.maps.lb4_services.get(key)
    master.algorithm = int(L.Algorithm.LEAST_CONN)
    lb.maps.lb4_services.set(key, master)
    try:
        (r,) = lab.client(tcp(VIP4, 80, 60))
    finally:
        del_service(lb.maps, VIP4, 80, "TCP", 3)
    assert r["errors"] == {} and set(r["ids"]) == set(BACKENDS4)
    assert lb.maps.lb_be_conns.count() == 0  # nothing counted that nothing gives back


@pytest.mark.root
def test_the_kernels_own_variant_serves_and_is_recorded_for_status(lab, monkeypatch, tmp_path):
    from pyagent.dataplanes.ebpf import socket_lb

    monkeypatch.setattr(socket_lb, "RUN_DIR", tmp_path)
    lb = _load(lab, socket_lb.kernel_variant())
    socket_lb.record_variant(lab.bpffs, lb.variant)
    rec = socket_lb.read_variant(lab.bpffs)
    assert rec["hooks"] == [h.func for h in lb.variant.hooks]
    assert rec["defines"] == lb.variant.defines
    assert os.path.exists(socket_lb.variant_record_path(lab.bpffs))
    put_service(lb.maps, VIP4, 80, "TCP", [(BACKENDS4[2], TCP_PORT)], 91)
    try:
        (r,) = lab.client(tcp(VIP4, 80, 3))
    finally:
        del_service(lb.maps, VIP4, 80, "TCP", 1)
    assert r["ids"] == [BACKENDS4[2]] * 3
    assert lb.maps.lb_svc_stats.get(ctypes.c_uint32(91))


# ---------------------------------------------------------------- the agent


@pytest.mark.root
def test_agent_without_set_retval_serves_and_reports_the_fallback(monkeypatch):
    """A node whose kernel lacks bpf_set_retval (before 5.18) keeps serving:
    Services with endpoints work, the empty one is refused at once (EPERM),
    the log and `pyagent status` say why."""
    from agentlab import agent_lab, service, slice_

    from ebpf import probe

    monkeypatch.setenv(probe.OVERRIDE_ENV, "set_retval=0")
    with agent_lab(2) as a:
        lab = a.lab
        a.write("svc.yaml", service("echo", ["10.96.0.10"], [("http", "TCP", 80)]),
                slice_("echo", "echo", 4, [("http", "TCP", 8080)],
                       [(p.ip4, True) for p in lab.pods]),
                service("empty", ["10.96.0.11"], [("http", "TCP", 80)]))
        a.start()
        a.wait(lambda f: len(f.get(("10.96.0.10", 80, "TCP"), ())) == 2
               and ("10.96.0.11", 80, "TCP") in f, "echo and empty")
        assert lab.client("10.96.0.10", 80, count=20).total == 20
        refused = lab.client("10.96.0.11", 80, count=3)
        assert refused.total == 0 and refused.errors == {"EPERM": 3}

        st = json.loads(a.pyagent("status", "--bpffs", a.bpffs, "--json").stdout)
        assert st["datapath"]["defines"]["LB_HAVE_SET_RETVAL"] == 0
        assert st["datapath"]["missing"] == ["set_retval"]
        assert st["datapath"]["overridden"] == ["set_retval"]
        text = a.pyagent("status", "--bpffs", a.bpffs).stdout
        assert "LB_HAVE_SET_RETVAL=0" in text and "fallback: no bpf_set_retval" in text
        assert "kernel fallback: no bpf_set_retval" in a.logs()
