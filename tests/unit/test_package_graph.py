"""The package layout has one direction (docs/architecture.md): commands are
leaves, and no package imports one above it. Checked by parsing imports."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pyagent"
# Each package may import only those after it in its entry (and itself).
ALLOWED = {
    "cli": {"node", "observe", "sources", "dataplanes", "core", "lab"},
    "node": {"observe", "sources", "dataplanes", "core"},
    "observe": {"dataplanes", "core"},
    "sources": {"core"},
    "dataplanes": {"core"},
    "core": set(),
    "lab": {"core"},
}


def imports(path: Path) -> set[str]:
    """Every pyagent module `path` imports (function-level imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pyagent")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("pyagent"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_command_imports_another() -> None:
    commands = {p.stem for p in (PKG / "cli").glob("*.py")
                if "def register(" in p.read_text()}
    assert {"run", "plan", "trace", "maps", "services", "cleanup"} <= commands
    offenders = [f"cli/{p.name} imports pyagent.cli.{c}"
                 for p in (PKG / "cli").glob("*.py") if p.stem != "__init__"
                 for c in sorted(commands) if f"pyagent.cli.{c}" in imports(p)]
    assert offenders == []


def test_packages_import_only_downwards() -> None:
    offenders = []
    for pkg, allowed in ALLOWED.items():
        for path in (PKG / pkg).rglob("*.py"):
            for mod in imports(path):
                parts = mod.split(".")
                if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != pkg \
                        and parts[1] not in allowed:
                    offenders.append(f"{path.relative_to(PKG)} imports {mod}")
    assert offenders == []


def test_the_top_level_holds_only_packages_and_the_entry_points() -> None:
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"]
    assert sorted(p.name for p in PKG.iterdir() if p.is_dir() and p.name in ALLOWED) == \
        sorted(ALLOWED)
