"""Shared test policy.

Tests marked `root` need root, BPF and network namespaces. Outside CI they
are skipped without root; with PYAGENT_REQUIRE_KERNEL=1 (set by the README's
test command, hence in CI) a skipped kernel test is turned into a failure, so
the kernel path is always exercised and never silently skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_KERNEL = os.environ.get("PYAGENT_REQUIRE_KERNEL") == "1"
IS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    for item in items:
        if "root" in item.keywords and not REQUIRE_KERNEL:
            item.add_marker(pytest.mark.skip(reason="needs root (BPF, namespaces)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_KERNEL and "root" in item.keywords and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped under PYAGENT_REQUIRE_KERNEL=1: {report.longrepr}"


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_labs() -> None:
    """Remove what a crashed earlier run left behind (our prefix only)."""
    if IS_ROOT:
        from pyagent.lab import Lab

        Lab.sweep()


@pytest.fixture
def bpffs() -> Iterator[str]:
    """A bpffs mount of the test's own, unmounted after it."""
    import tempfile

    from ebpf import bpffs as fs

    top = tempfile.mkdtemp(prefix="pyagent-bpffs-")
    path = os.path.join(top, "bpffs")
    os.mkdir(path)
    fs.mount(path)
    try:
        yield path
    finally:
        fs.umount(path)
        os.rmdir(path)
        os.rmdir(top)


@pytest.fixture
def lab() -> Iterator[object]:
    from pyagent.lab import Lab

    with Lab(pods=3) as lab:
        yield lab
