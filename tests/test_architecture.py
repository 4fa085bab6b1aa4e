"""The architecture the code states (issue 23): what `lint-imports` cannot see, checked on the source itself.

lint-imports (contracts in pyproject.toml, run by .ci/run) checks the layers and the absence of cycles; these tests
check two habits: no module imports another module's private names, and an import written inside a function is
there on purpose (a deferred heavy import, with a comment saying so).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "uat_core").rglob("*.py"), *(ROOT / "webapp").rglob("*.py")])


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    yield sub, True, lines
        elif isinstance(node, ast.Module):
            for sub in node.body:
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    yield sub, False, lines


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """'from x import _name' where x is another project module (names with one leading underscore)."""
    out = []
    for node, _, lines in _imports(path):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level or (node.module or "").startswith(("uat_core", "webapp")):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def undeclared_inner_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Imports inside a function without a comment that says why ('deferred' on the line or the one above)."""
    out = []
    for node, inner, lines in _imports(path):
        if inner:
            here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
            if "deferred" not in here and "deferred" not in above:
                out.append(f"{path.relative_to(root)}:{node.lineno}: {here.strip()}")
    return out


def test_the_checks_find_what_they_look_for(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from .x import _hidden\nfrom .x import visible\n\n\ndef f():\n    import json\n"
                   "    # deferred: torchvision is slow to import\n"
                   "    import torchvision\n    return json, torchvision\n")
    assert [x.split(": ")[1] for x in private_imports(bad, tmp_path)] == ["from .x import _hidden"]
    assert [x.split(": ")[1] for x in undeclared_inner_imports(bad, tmp_path)] == ["import json"]


@pytest.mark.parametrize("check", [private_imports, undeclared_inner_imports],
                         ids=["private names", "imports inside functions"])
def test_uat_core_and_webapp_keep_the_habits(check):
    found = [x for p in SOURCES for x in check(p)]
    assert not found, "\n".join(found)
