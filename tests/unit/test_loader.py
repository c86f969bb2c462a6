"""Loader children started ahead (pyagent/dataplanes/ebpf/loader.py): the
load that follows waits for the child started with the same arguments
instead of compiling twice, a failing child's stderr is the error, and
children nobody waited for are stopped. The child here is a stand-in module
that records its arguments (no BPF: this is process plumbing)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from pyagent.dataplanes.ebpf import loader

CHILD = """\
import os, sys, time
args = sys.argv[1:]
with open(os.environ["LOADER_LOG"], "a") as f:
    f.write(" ".join(args) + "\\n")
if "--size=SLEEP=1" in args:
    time.sleep(60)
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
    yield log
    loader.abandon_ahead()


def runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_child_started_ahead_is_the_one_waited_for(calls: Path, caplog) -> None:
    loader.start_ahead("fake_loader_child", "/b", {"A": 1, "B": 2})
    loader.start_ahead("fake_loader_child", "/b", {"B": 2, "A": 1})  # the same: no second
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        loader.run_child("fake_loader_child", "/b", {"B": 2, "A": 1}, "the test object")
    assert runs(calls) == ["--bpffs /b --size=A=1 --size=B=2"]
    assert "replacing incompatible pinned map x" in caplog.text  # what it said is logged
    loader.run_child("fake_loader_child", "/b", {"A": 1, "B": 2}, "the test object")
    assert len(runs(calls)) == 2  # taken once: a later load compiles anew


def test_other_arguments_do_not_take_the_child_started_ahead(calls: Path) -> None:
    loader.start_ahead("fake_loader_child", "/b", {"SLEEP": 1})
    loader.run_child("fake_loader_child", "/b", {"A": 9}, "the test object")
    deadline = time.monotonic() + 10
    while len(runs(calls)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(runs(calls)) == ["--bpffs /b --size=A=9", "--bpffs /b --size=SLEEP=1"]
    (sleeping,) = loader._ahead.values()
    loader.abandon_ahead()  # the sleeping one is stopped, not waited for
    assert sleeping.proc.returncode == -9 and loader._ahead == {}


def test_a_failing_child_raises_with_its_stderr(calls: Path) -> None:
    loader.start_ahead("fake_loader_child", "/b", {"FAIL": 1})
    with pytest.raises(RuntimeError, match="loading the test object failed:\nclang: error: "
                                           "it broke"):
        loader.run_child("fake_loader_child", "/b", {"FAIL": 1}, "the test object")
