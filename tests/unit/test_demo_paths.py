"""`./deploy/dev demo` copies the repository's examples/demo: the path
must survive moves of pyagent/lab/demo.py (it broke with the package
layout)."""

from __future__ import annotations

from pyagent.lab import demo


def test_the_demo_finds_its_manifests() -> None:
    assert demo.EXAMPLES.is_dir(), demo.EXAMPLES
    assert any(demo.EXAMPLES.glob("*.yaml")), demo.EXAMPLES
