"""accel.apply's choices per interface, against a fake rtnetlink: which
mode is tried in which order, what falls back to TC and what it says."""

from __future__ import annotations

import contextlib
import errno
import logging

import pytest

from ebpf import xdp
from pyagent.dataplanes.ebpf import accel


class FakeLinks:
    """Interfaces by name: the XDP program on each, and the modes each
    device refuses (errno)."""

    def __init__(self, refuse: dict[str, dict[str, int]] | None = None) -> None:
        self.names = ["eth0", "eth1"]
        self.progs: dict[int, xdp.Attached | None] = {0: None, 1: None}
        self.refuse = refuse or {}
        self.calls: list[tuple] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(xdp, "iproute", lambda netns: contextlib.nullcontext(self))
        monkeypatch.setattr(xdp, "ifindex", lambda ipr, name: self._index(name))
        monkeypatch.setattr(xdp, "query", lambda ipr, index: self.progs[index])
        monkeypatch.setattr(xdp, "attach", self._attach)
        monkeypatch.setattr(xdp, "detach", self._detach)

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise LookupError(name)
        return self.names.index(name)

    def _attach(self, ipr, index: int, fd: int, mode: str) -> None:
        self.calls.append(("attach", index, mode))
        code = self.refuse.get(self.names[index], {}).get(mode)
        if code:
            raise OSError(code, "refused")
        current = self.progs[index]
        if current is not None and current.mode != mode:
            raise OSError(errno.EEXIST, "one mode at a time")
        self.progs[index] = xdp.Attached(mode, fd, "lb_xdp_ingress")

    def _detach(self, ipr, index: int, mode: str) -> None:
        self.calls.append(("detach", index, mode))
        if self.progs[index] is not None and self.progs[index].mode == mode:
            self.progs[index] = None


def test_best_effort_takes_native_else_generic(monkeypatch):
    links = FakeLinks({"eth1": {xdp.NATIVE: errno.EOPNOTSUPP}})
    links.install(monkeypatch)
    out = accel.apply("best-effort", ["eth0", "eth1"], prog_fd=7)
    assert [(o.ifname, o.mode) for o in out] == [("eth0", "native"), ("eth1", "generic")]


def test_native_only_falls_back_to_tc_saying_why(monkeypatch, caplog):
    links = FakeLinks({"eth0": {xdp.NATIVE: errno.EOPNOTSUPP}})
    links.install(monkeypatch)
    with caplog.at_level(logging.WARNING):
        (o,) = accel.apply("native", ["eth0"], prog_fd=7)
    assert o.mode is None and o.reason == "native: Operation not supported"
    assert ("eth0: TC only (native: Operation not supported); NodePort, externalIP and "
            "LoadBalancer traffic is served by TC there") in caplog.text
    assert links.calls == [("attach", 0, "native")]  # generic never tried


def test_every_mode_refused_lists_each_reason(monkeypatch):
    FakeLinks({"eth0": {xdp.NATIVE: errno.EOPNOTSUPP, xdp.GENERIC: errno.EINVAL}}
              ).install(monkeypatch)
    (o,) = accel.apply("best-effort", ["eth0"], prog_fd=7)
    assert o.reason == "native: Operation not supported; generic: Invalid argument"


def test_a_program_that_did_not_load_means_tc_and_no_stale_xdp(monkeypatch):
    links = FakeLinks()
    links.progs[0] = xdp.Attached(xdp.NATIVE, 3, "lb_xdp_ingress")  # an older load's
    links.install(monkeypatch)
    (o,) = accel.apply("native", ["eth0"], prog_fd=None, load_error="verifier: too complex")
    assert (o.mode, o.reason) == (None, "the XDP program did not load: verifier: too complex")
    assert links.progs[0] is None


def test_another_tools_program_is_never_touched(monkeypatch):
    links = FakeLinks()
    other = xdp.Attached(xdp.NATIVE, 99, "katran")
    links.progs[0] = other
    links.install(monkeypatch)
    for setting in ("native", "disabled"):
        (o,) = accel.apply(setting, ["eth0"], prog_fd=7)
        assert o.mode is None and "another XDP program is attached (id 99, 'katran')" in o.reason
    assert links.progs[0] is other and links.calls == []
    assert accel.detach(["eth0"]) == 0


def test_switching_mode_detaches_ours_first_and_disabled_removes_it(monkeypatch):
    links = FakeLinks()
    links.install(monkeypatch)
    accel.apply("native", ["eth0"], prog_fd=7)
    (o,) = accel.apply("generic", ["eth0"], prog_fd=8)
    assert o.mode == "generic" and links.calls[-2:] == [("detach", 0, "native"),
                                                        ("attach", 0, "generic")]
    (o,) = accel.apply("disabled", ["eth0"], prog_fd=None)
    assert (o.mode, o.reason, links.progs[0]) == (None, "disabled", None)


def test_same_mode_is_replaced_in_place(monkeypatch):
    links = FakeLinks()
    links.install(monkeypatch)
    accel.apply("native", ["eth0"], prog_fd=7)
    accel.apply("best-effort", ["eth0"], prog_fd=8)
    assert ("detach", 0, "native") not in links.calls  # no moment on TC alone
    assert links.progs[0].prog_id == 8


def test_detach_and_attached_skip_missing_interfaces(monkeypatch):
    links = FakeLinks()
    links.install(monkeypatch)
    accel.apply("native", ["eth0"], prog_fd=7)
    assert accel.attached(["eth0", "gone0"]) == {"eth0": "native"}
    assert accel.detach(["eth0", "gone0"]) == 1
    assert accel.attached(["eth0"]) == {}
