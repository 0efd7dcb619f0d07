"""Imports go one way: features -> models -> training and serving; training and serving
never import each other, and features imports neither models nor the entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "features": {"models", "training", "serving"},
    "models": {"training", "serving"},
    "training": {"serving"},
    "serving": {"training"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    files = list((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for f in files:
        bad = _imports(f) & FORBIDDEN[package]
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_one_module_imports_shap():
    users = [f for p in FORBIDDEN for f in (ROOT / p).rglob("*.py") if "shap" in _imports(f)]
    assert [f.relative_to(ROOT).as_posix() for f in users] == ["models/explain.py"]
