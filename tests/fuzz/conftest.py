"""The fuzz suite's seed and budget (see tests/fuzz/common.py)."""

from __future__ import annotations

from .common import BUDGET, SCALE, SEED


def pytest_report_header() -> str:
    return (f"fuzz: seed {SEED} (PYAGENT_FUZZ_SEED), scale {SCALE} (PYAGENT_FUZZ_SCALE), "
            f"{BUDGET}")
