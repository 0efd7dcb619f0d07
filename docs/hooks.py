"""MkDocs hook: the reference pages, generated from the code at every build.

* ``reference/cli.md`` from the argparse parser (``training.cli.build_parser``), every
  command and sub-command with its ``--help``;
* ``reference/settings.md`` from the pydantic settings model (``features.settings.Settings``);
* ``reference/api.md`` from the app's OpenAPI schema (``serving.app.create_app``).

The pages are added to the build in memory (nothing is written under ``docs/``), so they
cannot go stale. Each generator is a plain function returning Markdown, tested in
``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `mkdocs build` from a clone without `pip install -e .`
    sys.path.insert(0, str(ROOT))

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, one-line help) of each direct sub-command; aliases are listed once."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            yield name, sub, helps.get(name) or (sub.description or "").split(". ")[0]


def _walk(parser: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for name, sub, help_ in _subcommands(parser):
        command = f"{prefix} {name}"
        yield command, sub, help_
        yield from _walk(sub, command)


def _help_text(parser: argparse.ArgumentParser) -> str:
    """``--help`` as a 100-column terminal prints it (argparse wraps at the terminal width)."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_help().rstrip()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """One section per command (depth first), its one-line help and its full ``--help`` text."""
    commands = list(_walk(parser, parser.prog))
    lines = [
        "# CLI reference",
        "",
        "Generated from `training.cli.build_parser()` at every docs build; `funnelcast COMMAND --help`",
        "prints the same text.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| `{command}` | {help_.replace('|', '&#124;')} |" for command, _, help_ in commands]
    lines += ["", f"## {parser.prog}", "", "```text", _help_text(parser), "```"]
    for command, sub, help_ in commands:
        lines += ["", f"## {command}", ""]
        if help_:
            lines += [help_[:1].upper() + help_[1:] + ".", ""]
        lines += ["```text", _help_text(sub), "```"]
    return "\n".join(lines) + "\n"


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "").replace(" | ", " or ")


def _default(field: typing.Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.is_required():
        return "required"
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if value else "empty"
    return str(value)


def settings_markdown(settings_cls: typing.Any) -> str:
    """One row per field of the pydantic settings model: variable, type, default, description."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    lines = [
        "# Settings reference",
        "",
        "Generated from `features.settings.Settings` at every docs build. Every setting is read",
        f"from an environment variable `{prefix}<NAME>` (or a `.env` file in the working folder);",
        "a list is a JSON list (`FUNNELCAST_API_KEYS='[\"dev-key\"]'`) or comma-separated",
        "(`FUNNELCAST_OPEN_STAGES=qualification,proposal,contract`). A value that cannot be read stops",
        "the command with the variable's name and what is wrong (a key's value is never echoed).",
        "",
        "| variable | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, field in settings_cls.model_fields.items():
        description = (field.description or "").replace("|", "&#124;")
        lines.append(f"| `{prefix}{name.upper()}` | `{_type_name(field.annotation)}` | "
                     f"`{_default(field)}` | {description} |")
    return "\n".join(lines) + "\n"


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "items" in schema:
        return f"list of {_schema_name(schema['items'])}"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " or ".join(_schema_name(s) for s in schema[union])
    if "type" not in schema:
        return "any"
    return f"{schema['type']} ({schema['format']})" if "format" in schema else schema["type"]


def _operation_markdown(method: str, path: str, op: dict) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [f"**{op['summary']}**", ""]
    if op.get("description"):
        lines += [" ".join(op["description"].split()), ""]
    if op.get("security"):
        lines += ["Needs an API key (`X-API-Key` header).", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            description = " ".join((p.get("description") or "").split()).replace("|", "&#124;")
            lines.append(f"| `{p['name']}` | {p['in']} | {_schema_name(p.get('schema', {}))} | "
                         f"{'yes' if p.get('required') else 'no'} | {description} |")
        lines.append("")
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        name = _schema_name(body.get("schema", {}))
        lines += [f"Request body: [`{name}`](#{name.lower()}) (JSON).", ""]
    responses = op.get("responses", {})
    if responses:
        lines += ["| status | meaning |", "|---|---|"]
        lines += [f"| {code} | {r.get('description', '')} |" for code, r in sorted(responses.items())]
        lines.append("")
    return lines


def _schemas_markdown(components: dict) -> list[str]:
    """Each request and response schema: its fields, their types, whether required, descriptions."""
    lines = ["", "## Schemas", ""]
    for name, spec in sorted(components.items()):
        lines += [f"### {name}", ""]
        if spec.get("description"):
            lines += [" ".join(spec["description"].split()), ""]
        props, required = spec.get("properties", {}), set(spec.get("required", []))
        if not props:
            lines += [f"{_schema_name(spec)}" + (f": one of `{'`, `'.join(map(str, spec['enum']))}`" if "enum" in spec else ""), ""]
            continue
        lines += ["| field | type | required | description |", "|---|---|---|---|"]
        for field, p in props.items():
            description = " ".join((p.get("description") or "").split()).replace("|", "&#124;")
            lines.append(f"| `{field}` | {_schema_name(p)} | {'yes' if field in required else 'no'} | {description} |")
        lines.append("")
    return lines


def openapi_markdown(schema: dict) -> str:
    """Each operation of an OpenAPI schema, grouped by tag: method, path, summary, parameters, responses."""
    info = schema.get("info", {})
    lines = [
        "# API reference",
        "",
        f"Generated from the app's OpenAPI schema ({info.get('title', '')} {info.get('version', '')}) at every",
        "docs build. A running server serves the same schema at <http://127.0.0.1:8000/openapi.json>",
        "and an interactive page at <http://127.0.0.1:8000/docs>.",
        "",
        " ".join(info.get("description", "").split()),
    ]
    groups: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in schema.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                tag = (item[method].get("tags") or ["other"])[0]
                groups.setdefault(tag, []).append((method, path, item[method]))
    for tag, ops in groups.items():
        lines += ["", f"## {tag}", ""]
        for method, path, op in ops:
            lines += _operation_markdown(method, path, op)
    lines += _schemas_markdown(schema.get("components", {}).get("schemas", {}))
    return "\n".join(lines).rstrip() + "\n"


def _openapi_schema() -> dict:
    from features.settings import Settings
    from serving.app import create_app

    with tempfile.TemporaryDirectory() as home:  # nothing is loaded: .openapi() needs no model
        return create_app(Settings(home=Path(home))).openapi()


def reference_pages() -> dict[str, str]:
    """The generated pages by their path under ``docs/``."""
    from features.settings import Settings
    from training.cli import build_parser

    return {
        "reference/cli.md": cli_markdown(build_parser()),
        "reference/settings.md": settings_markdown(Settings),
        "reference/api.md": openapi_markdown(_openapi_schema()),
    }


def on_files(files: typing.Any, config: typing.Any) -> typing.Any:
    """MkDocs event: add the generated reference pages to the site's files."""
    from mkdocs.structure.files import File

    for src_uri, content in reference_pages().items():
        files.append(File.generated(config, src_uri, content=content))
    return files
