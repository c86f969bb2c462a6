"""`pyagent socket-lb exclude` refuses where the loaded socket LB cannot tell
namespaces apart (a kernel without bpf_get_netns_cookie at the hooks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyagent.cli import main
from pyagent.dataplanes.ebpf import socket_lb


def test_exclude_refuses_without_netns_cookies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(socket_lb, "RUN_DIR", tmp_path / "run")
    record = socket_lb.variant_record_path(str(tmp_path))
    assert record.is_relative_to(tmp_path)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"defines": {"LB_HAVE_NETNS_COOKIE": 0}}))
    assert main(["socket-lb", "exclude", "--bpffs", str(tmp_path), "12345"]) == 1
    assert "cannot tell namespaces apart" in capsys.readouterr().err
