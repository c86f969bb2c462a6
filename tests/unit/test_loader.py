"""Loader children (pyagent/dataplanes/ebpf/loader.py): the child gets the
bpffs and the sizes as flags, a failing child's stderr is the error, and what
a child that succeeded said is logged. The child here is a stand-in module
that records its arguments (no BPF: this is process plumbing)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pyagent.dataplanes.ebpf import loader

CHILD = """\
import os, sys
args = sys.argv[1:]
with open(os.environ["LOADER_LOG"], "a") as f:
    f.write(" ".join(args) + "\\n")
if "--size=FAIL=1" in args:
    print("clang: error: it broke", file=sys.stderr)
    sys.exit(3)
print("replacing incompatible pinned map x", file=sys.stderr)
"""


@pytest.fixture()
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "fake_loader_child.py").write_text(CHILD)
    log = tmp_path / "calls"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("LOADER_LOG", str(log))
    monkeypatch.setattr(loader.fs, "ensure", lambda path: False)
    return log


def test_the_child_gets_its_flags_and_what_it_said_is_logged(calls: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        loader.run_child("fake_loader_child", "/b", {"A": 1, "B": 2}, "the test object")
    assert calls.read_text().splitlines() == ["--bpffs /b --size=A=1 --size=B=2"]
    assert "replacing incompatible pinned map x" in caplog.text


def test_a_failing_child_raises_with_its_stderr(calls: Path) -> None:
    with pytest.raises(RuntimeError, match="loading the test object failed:\nclang: error: "
                                           "it broke"):
        loader.run_child("fake_loader_child", "/b", {"FAIL": 1}, "the test object")
