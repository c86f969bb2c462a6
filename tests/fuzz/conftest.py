"""The fuzz suite's seed and budget (see tests/fuzz/common.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from .common import BUDGET, SCALE, SEED


def pytest_report_header() -> str:
    return (f"fuzz: seed {SEED} (PYAGENT_FUZZ_SEED), scale {SCALE} (PYAGENT_FUZZ_SCALE), "
            f"{BUDGET}")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Thousands of expected warnings ("invalid ...") cost time; restored after."""
    logger = logging.getLogger("pyagent")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
