"""The mode registry (pyagent.dataplanes.registry): one list of modes, one
path for `pyagent cleanup`, mode switches and Dataplane.cleanup()."""

from __future__ import annotations

import argparse

import pytest

from pyagent.cli import cleanup as cmd_cleanup
from pyagent.cli import kubeproxy_flags
from pyagent.core.config import NodeConfig
from pyagent.dataplanes import registry
from pyagent.dataplanes.iptables.dataplane import IptablesDataplane

from .test_modes_iptables import FakeExec

CFG = NodeConfig(node_name="n1", node_ips=("192.168.0.2",))


def test_every_mode_is_registered_under_its_name() -> None:
    for name in registry.MODES:
        try:
            mode = registry.get(name)
        except ImportError:  # e.g. no BCC in this build: the others still work
            continue
        assert mode.name == name
        assert getattr(mode.create, "name", name) == name  # the dataplane's own name
    with pytest.raises(KeyError):
        registry.get("bogus")


def test_the_command_line_offers_the_registry_modes() -> None:
    assert kubeproxy_flags.MODES is registry.MODES
    parser = argparse.ArgumentParser()
    cmd_cleanup.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["cleanup", "--mode", "bogus"])
    for name in registry.MODES:
        assert parser.parse_args(["cleanup", "--mode", name]).mode == name


def test_clean_other_modes_removes_what_other_modes_left(monkeypatch) -> None:
    removed: list[str] = []

    def fake(name: str) -> registry.Mode:
        if name == "ipvs":
            raise ImportError("no pyroute2")
        return registry.Mode(name, create=lambda c: None,  # type: ignore[arg-type,return-value]
                             present=lambda c: name in ("ebpf", "nftables", "iptables"),
                             remove=lambda c: removed.append(name) or "")
    monkeypatch.setattr(registry, "get", fake)
    config = NodeConfig(mode="iptables")
    assert registry.clean_other_modes(config) == ["ebpf", "nftables"]
    assert removed == ["ebpf", "nftables"]


def test_default_cleanup_reports_nothing_when_absent() -> None:
    mode = registry.Mode("x", create=lambda c: None,  # type: ignore[arg-type,return-value]
                         present=lambda c: False, remove=lambda c: "removed")
    assert mode.cleanup(CFG) == "nothing to clean"
    assert registry.Mode("x", mode.create, lambda c: True, mode.remove).cleanup(CFG) == "removed"


class ChainsExec(FakeExec):
    """iptables-save lists one stale chain of ours; `-C` finds the hooks."""

    def run(self, argv, stdin=None, check=True) -> str:
        out = super().run(argv, stdin, check)
        if "save" in argv[0] and "nat" in argv:
            return "*nat\n:PYAGENT-SVC-STALE - [0:0]\nCOMMIT\n"
        return out

    def ok(self, argv) -> bool:
        super().ok(argv)
        return True


def test_dataplane_cleanup_is_the_cli_removal() -> None:
    """Dataplane.cleanup() removes what `pyagent cleanup --mode iptables`
    removes: every chain with our prefix, whoever wrote it."""
    ex = ChainsExec()
    IptablesDataplane(CFG, ex=ex, families=(4,)).cleanup()
    assert any("-X PYAGENT-SVC-STALE" in r for r in ex.restores), ex.restores
    assert any("-D" in c for c in ex.commands)  # the hooks were unhooked
