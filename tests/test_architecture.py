"""The house map, checked from the code.

Imports go one way: features -> models -> training and serving; training and serving never import each
other, and features imports neither models nor the entry points. An import is also what hides behind
``__import__("x")``, ``importlib.import_module("x")`` and a string that names a project module
(``"serving.app:create_app"`` handed to uvicorn): a dependency by string is still a dependency.
No module-level import circle among the project's modules, and no function longer than 80 lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "models", "training", "serving")
FORBIDDEN = {
    "features": {"models", "training", "serving"},
    "models": {"training", "serving"},
    "training": {"serving"},
    "serving": {"training"},
}
#: ``pkg.module`` or ``pkg.module:attr`` for a project package: a module named by string.
MODULE_STRING = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+(?::\w+)?$")
MAX_FUNCTION_LINES = 80


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _dynamic_targets(node: ast.AST) -> list[str]:
    """Modules named by ``__import__("x")``, ``import_module("x")`` or a module-path string constant."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
        if name in {"__import__", "import_module"} and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
        return [node.value.split(":")[0]]
    return []


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Full module names ``path`` imports (statically, or by string unless ``module_level_only``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif not module_level_only:
            out |= set(_dynamic_targets(node))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    files = _files(package)
    assert files, f"{package} has no modules"
    for f in files:
        bad = {m.split(".")[0] for m in _imports(f)} & FORBIDDEN[package]
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)} (statically or by string)"


def test_dynamic_imports_are_seen(tmp_path):
    """The check above is not blind to imports by string (the way circles and wrong-way imports hid)."""
    f = tmp_path / "m.py"
    f.write_text('__import__("training.cli_ops")\nimportlib.import_module("serving.app")\nAPP = "serving.app:create_app"\n')
    assert {"training.cli_ops", "serving.app"} <= _imports(f)


def test_no_module_level_import_circle():
    modules = {_module_name(f): f for p in PACKAGES for f in _files(p)}
    graph = {m: {i for i in _imports(f, module_level_only=True) if i in modules and i != m} for m, f in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("module-level import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_function_longer_than_80_lines():
    long = []
    for p in PACKAGES:
        for f in _files(p):
            for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_only_one_module_imports_shap():
    users = [f for p in PACKAGES for f in _files(p) if "shap" in {m.split(".")[0] for m in _imports(f)}]
    assert [f.relative_to(ROOT).as_posix() for f in users] == ["models/explain.py"]
