"""The README stays short and self-contained; the docs' reference pages follow the code.

`mkdocs build --strict` (run by `make test`) checks the site's own links and anchors; these
tests check what it cannot: the README, and the generators in docs/hooks.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOCAL_HOSTS = ("localhost", "127.0.0.1")

sys.path.insert(0, str(ROOT / "docs"))
import hooks  # noqa: E402  (docs/hooks.py, the MkDocs hook)


def _links(text: str) -> list[str]:
    """Targets of Markdown links and images, autolinks and bare URLs."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<(https?://[^>\s]+)>", text)
    return targets + re.findall(r"(?<![(<])\bhttps?://[^\s)>`'\"]*[^\s)>`'\".,;:]", text)


def test_readme_fits_on_a_few_screens():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_links_stay_in_the_repository():
    for target in _links(README.read_text()):
        if re.match(r"https?://", target):
            host = re.match(r"https?://([^/:]+)", target).group(1)
            assert host in LOCAL_HOSTS, f"README links outside the repository: {target}"
        else:
            path = (ROOT / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT), f"README link leaves the repository: {target}"
            assert path.exists(), f"README link to a missing file: {target}"


def test_link_finder_sees_every_kind_of_link():
    text = "[a](docs/x.md) ![i](docs/img/p.png) <http://127.0.0.1:8000/docs> see https://example.com/y."
    assert _links(text) == ["docs/x.md", "docs/img/p.png", "http://127.0.0.1:8000/docs", "https://example.com/y"]


def test_cli_page_walks_nested_commands_with_and_without_help():
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("quiet")  # no help, no description: must not break the page
    loud = sub.add_parser("loud", help="make noise", aliases=["l"])
    loud.add_argument("--volume", type=int, help="how loud")
    inner = loud.add_subparsers(dest="what")
    inner.add_parser("bell", description="Ring the bell. Twice.")
    page = hooks.cli_markdown(parser)
    headings = re.findall(r"^## (.+)$", page, flags=re.M)
    assert headings == ["tool", "tool quiet", "tool loud", "tool loud bell"]
    assert "| `tool loud bell` | Ring the bell |" in page
    assert "--volume VOLUME" in page and "how loud" in page


def test_cli_page_has_every_command_of_funnelcast():
    from training.cli import build_parser

    parser = build_parser()
    page = hooks.cli_markdown(parser)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert commands
    for name in commands:
        assert f"\n## funnelcast {name}\n" in page


def test_settings_page_has_a_row_per_setting():
    from features.settings import Settings

    page = hooks.settings_markdown(Settings)
    rows = re.findall(r"^\| `(FUNNELCAST_[A-Z_]+)` \|", page, flags=re.M)
    assert rows == [f"FUNNELCAST_{name.upper()}" for name in Settings.model_fields]
    assert "| `FUNNELCAST_HORIZON_DAYS` | `int or None` | `none` |" in page


def test_api_page_has_every_operation():
    schema = hooks._openapi_schema()
    page = hooks.openapi_markdown(schema)
    operations = [(m, p) for p, item in schema["paths"].items() for m in item if m in hooks.HTTP_METHODS]
    assert ("post", "/v1/leads/score") in operations
    for method, path in operations:
        assert f"### `{method.upper()} {path}`" in page
    assert "| `idempotency-key` | header |" in page
    for name in schema["components"]["schemas"]:
        assert f"\n### {name}\n" in page
    assert "Request body: [`LeadScoreRequest`](#leadscorerequest) (JSON)." in page
    assert "| `created_at` | string (date-time) | yes |" in page


def test_generated_pages_are_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = hooks.reference_pages()
    assert sorted(pages) == ["reference/api.md", "reference/cli.md", "reference/settings.md"]
    for page in pages:
        assert f": {page}" in nav
