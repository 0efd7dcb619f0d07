"""The CLI modules import one way: training.cli -> command modules -> training.cli_common."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "training"
COMMANDS = ("cli_train", "cli_deals", "cli_accounts", "cli_ops", "cli_adapters")


def _imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def _calls(path: Path, name: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))
               and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
               for n in ast.walk(ast.parse(path.read_text())))


def test_the_shared_helpers_import_no_command_module():
    imported = _imported(ROOT / "cli_common.py")
    assert not {m for m in imported if m.startswith("training.cli")}


def test_command_modules_do_not_import_the_parser_or_each_other():
    for name in COMMANDS:
        imported = _imported(ROOT / f"{name}.py")
        clis = {m.split(".")[1] for m in imported if m.startswith("training.cli")}
        assert clis <= {"cli_common"}, f"{name} imports {sorted(clis)}"


def test_the_parser_names_its_command_modules_and_builds_no_namespace():
    imported = _imported(ROOT / "cli.py")
    assert {f"training.{c}" for c in COMMANDS} <= imported
    for f in ROOT.glob("cli*.py"):
        assert not _calls(f, "__import__") and not _calls(f, "Namespace"), f.name
        assert "importlib" not in _imported(f), f.name


def test_serve_comes_from_serving_through_the_entry_point(monkeypatch):
    """`funnelcast serve` is serving's command, found through the `funnelcast.commands` entry point."""
    from training.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "8123"])
    assert args.func.__module__ == "serving.cli" and args.port == 8123


def test_a_missing_contributed_command_is_a_clear_error(monkeypatch):
    import pytest

    from features.errors import FunnelcastError
    from features.settings import Settings
    from training import cli_common

    monkeypatch.setattr(cli_common, "COMMANDS_GROUP", "funnelcast.no-such-group")
    with pytest.raises(FunnelcastError, match="'serve' command is not installed"):
        cli_common.run_plugin_command(["serve"], Settings())
