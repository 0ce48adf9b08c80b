"""docs/guarantees.md names the test that proves each promise: every name it gives must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "guarantees.md"
REF = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?[^`]*`")


def _references() -> list[tuple[str, str | None]]:
    """(test file, test name or None) for every `tests/x.py::name` and `::name` (same file as before)."""
    refs: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in REF.finditer(DOC.read_text(encoding="utf-8")):
        file, name = match.group(1), match.group(2)
        if file:
            current = file
        if current and (file or name):
            refs.append((current, name))
    return refs


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_the_guarantees_page_names_exists() -> None:
    refs = _references()
    assert len(refs) > 30, "the page names the tests that prove its promises"
    missing = []
    for file, name in refs:
        path = REPO / file
        if not path.exists():
            missing.append(file)
        elif name and name not in _functions(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"
