"""The test policy itself: under PYAGENT_REQUIRE_KERNEL=1 a kernel test that
cannot run fails instead of passing silently; no test installs packages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_without_vectors(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYAGENT_CONFORMANCE_DIR=str(tmp_path / "missing"))
    env.pop("PYAGENT_REQUIRE_KERNEL", None)
    if require:
        env["PYAGENT_REQUIRE_KERNEL"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_north_south_conformance.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_missing_conformance_vectors_fail_when_the_kernel_is_required(tmp_path) -> None:
    required = _run_without_vectors(tmp_path, require=True)
    assert required.returncode != 0 and re.search(r" (failed|error)", required.stdout), \
        required.stdout[-2000:]
    relaxed = _run_without_vectors(tmp_path, require=False)
    assert relaxed.returncode == 0 and "skipped" in relaxed.stdout, relaxed.stdout[-2000:]


def test_no_test_runs_a_package_manager() -> None:
    install = re.compile(r"""["'](apt-get|apt|dnf|yum|pip)["']\s*,\s*["']install["']""")
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py")
                 if install.search(p.read_text())]
    assert offenders == []


def test_the_repository_cites_only_files_it_has() -> None:
    """DESIGN.md and scripts/setup.sh live outside the repository (or nowhere)."""
    texts = [REPO / "README.md", REPO / "pyproject.toml", *(REPO / "docs").rglob("*.md"),
             *(REPO / "pyagent").rglob("*.py"), *(REPO / "deploy").rglob("*")]
    stale = ("DESIGN.md", "scripts/setup.sh")
    offenders = [f"{p.relative_to(REPO)}: {s}" for p in texts if p.is_file()
                 for s in stale if s in p.read_text(errors="replace")]
    assert offenders == []
