"""MkDocs hooks (mkdocs.yml ``hooks:``): the reference pages' tables are generated from the code at build time, so
they cannot drift from it. A page asks for one with a marker line, which is replaced by Markdown:

- ``<!-- generated: settings -->``: every ``ENGRAM_*`` setting, from ``service.settings.Settings`` (name, type and
  default from the class, meaning from the comment beside or above each field: a field without one fails the build);
- ``<!-- generated: strategies -->``: what ``GET /v1/strategies`` answers (``EngramService.strategies``), with
  each parameter's comment from ``model_core/strategy_specs.py`` and its allowed values;
- ``<!-- generated: openapi -->``: every operation of the OpenAPI document the app serves at
  ``/schema/openapi.json``, fetched from an app built on a throw-away data folder (no server is started);
- ``<!-- generated: cli -->``: ``engram --help`` and each subcommand's, from the parser ``engram`` runs.

The hooks import the server (``pip install -e '.[server,docs]'``).
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import tempfile
import tokenize
import warnings
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.M)
LIST_ITEM = re.compile(r"^([-*]|\d+\.) ")


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), nest_lists(markdown))


def nest_lists(markdown: str) -> str:
    """The pages are written as GitHub reads them: nested lists indented by two or three spaces, lists and tables
    right under a paragraph. Python-Markdown nests only from four spaces and starts a list or a table only after a
    blank line. So each indented line's indent is doubled (a code fence opened inside a list moves with its
    contents; top-level code blocks and admonition bodies are left as they are), and a blank line goes before a
    list or a table that follows a paragraph."""
    out: list[str] = []
    fence: int | None = None  # the indent of the open fence's opening line, None outside a fence
    shift = 0  # how far the open fence moved
    admonition = False
    for line in markdown.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        stripped = line.strip()
        if fence is not None:
            if fence == 0:
                out.append(line)
            else:
                out.append(" " * shift + line if line.strip() else line)
            if stripped.startswith("```") and indent <= fence + 3:
                fence = None
            continue
        if stripped.startswith("```"):
            fence, shift = indent, indent
            out.append(" " * indent + line if indent else line)
            continue
        if stripped.startswith("!!!"):
            admonition = True
        elif admonition and (indent == 0 and stripped):
            admonition = False
        starts_block = LIST_ITEM.match(line) or line.startswith("|")
        previous = out[-1] if out else ""
        if indent == 0 and starts_block and previous.strip() and not previous.startswith((" ", "|", "#")) and not (
            LIST_ITEM.match(previous)
        ):
            out.append("")  # GitHub starts a list or a table right under a paragraph; Python-Markdown needs a blank line
        out.append(" " * indent + line if indent and not admonition else line)
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")


def source_comments(path: Path) -> dict[int, str]:
    """line number -> the text of the comment on that line."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}


def comment_for(line: int, end_line: int, comments: dict[int, str], lines: list[str]) -> str:
    """The comment lines directly above ``line`` (a whole-line comment block) and the one at the end of the node."""
    above: list[str] = []
    i = line - 1
    while i >= 1 and lines[i - 1].strip().startswith("#"):
        above.insert(0, comments[i])
        i -= 1
    trailing = comments.get(end_line) if not lines[end_line - 1].strip().startswith("#") else None
    return " ".join([*above, *([trailing] if trailing else [])])


def cell(text: str) -> str:
    """``text`` for a table cell: pipes escaped, and ``<`` ``>`` outside code spans shown, not read as HTML."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def code(value: Any) -> str:
    return "`" + (json.dumps(value) if not isinstance(value, str) else value).replace("`", "'") + "`"


# --- settings ---------------------------------------------------------------------------------------------------


def settings_table(path: Path = ROOT / "service" / "settings.py") -> str:
    """``path``: the settings module's source (a test passes a doctored copy)."""
    from service.settings import Settings

    lines = path.read_text().splitlines()
    comments = source_comments(path)
    cls = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    meaning = {
        node.target.id: comment_for(node.lineno, node.end_lineno or node.lineno, comments, lines)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    rows = ["| variable | default (type) | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if not meaning.get(name):
            raise ValueError(f"service/settings.py: Settings.{name} has no comment saying what it means")
        default = field.default
        shown = "(none)" if default is None or default == "" else code(str(default) if isinstance(default, Path) else default)
        kind = re.sub(r"\b(pathlib|typing)\.", "", str(field.annotation)).replace("<class '", "").replace("'>", "")
        rows.append(f"| `ENGRAM_{name.upper()}` | {shown} (`{kind}`) | {cell(meaning[name])} |")
    return "\n".join(rows)


# --- strategies -------------------------------------------------------------------------------------------------


def strategy_parameter_comments() -> dict[tuple[str, str], str]:
    """(strategy, parameter) -> the comment written beside or above the parameter's default."""
    path = ROOT / "model_core" / "strategy_specs.py"
    text = path.read_text()
    lines, comments, found = text.splitlines(), source_comments(path), {}
    for node in ast.walk(ast.parse(text)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "StrategySpec" and node.args):
            continue
        name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
        for kw in node.keywords:
            if kw.arg == "defaults" and isinstance(kw.value, ast.Dict):
                for key, value in zip(kw.value.keys, kw.value.values, strict=True):
                    if isinstance(key, ast.Constant):
                        end = value.end_lineno or value.lineno
                        found[(str(name), str(key.value))] = comment_for(key.lineno, end, comments, lines)
    return found


def strategies_page() -> str:
    from model_core.strategy_specs import SPECS
    from service.application.services import EngramService

    answer = EngramService.strategies()  # what GET /v1/strategies serves
    notes = strategy_parameter_comments()
    out: list[str] = []
    flags = "| strategy | what it does | keeps training samples | adds classes to one head | task-incremental only |"
    out += [flags, "|---|---|---|---|---|"]
    for name, s in answer.items():
        yes = {True: "yes", False: "no"}
        out.append(f"| [`{name}`](#{name}) | {cell(s['summary'])} | {yes[s['stores_data']]} | "
                   f"{yes[s['adds_classes']]} | {yes[s['needs_tasks']]} |")  # fmt: skip
    for name, s in answer.items():
        out += ["", f"## `{name}` {{#{name}}}", "", s["summary"][:1].upper() + s["summary"][1:] + "."]
        if not s["parameters"]:
            out += ["", "No parameters."]
            continue
        out += ["", "| parameter | default | allowed | meaning |", "|---|---|---|---|"]
        choices = SPECS[name].choices
        for key, default in s["parameters"].items():
            allowed = ", ".join(code(c) for c in choices.get(key, ())) or ""
            out.append(f"| `{key}` | {code(default)} | {allowed} | {cell(notes.get((name, key), ''))} |")
    return "\n".join(out)


# --- OpenAPI ----------------------------------------------------------------------------------------------------


@cache
def openapi_document() -> dict[str, Any]:
    """The document the app serves at /schema/openapi.json, from an app on a throw-away SQLite folder."""
    import logging

    from litestar.testing import TestClient

    from service.http.app import create_app
    from service.persistence.migrations import upgrade
    from service.settings import Settings

    for name in ("alembic", "engram", "httpx"):  # the migration, the access log and the client's request lines
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Litestar's notes on handler signatures, not ours to show
        # every path and URL given, so that no ENGRAM_* variable of the building shell points it elsewhere
        settings = Settings(data_dir=Path(tmp), database_url=f"sqlite:///{tmp}/engram.db", artifacts_dir=Path(tmp) / "a",
                            artifacts_url=None, api_keys="", insecure=True)  # fmt: skip
        upgrade(settings.db_url)
        with TestClient(create_app(settings)) as client:
            response = client.get("/schema/openapi.json")
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]


def schema_text(schema: dict[str, Any]) -> str:
    """A short type for a table cell: a component's name, an array's items, an enum's values."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(schema_text(s) for s in schema.get("oneOf") or schema["anyOf"])
    if "enum" in schema:
        return " / ".join(code(v) for v in schema["enum"])
    if "const" in schema:
        return code(schema["const"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return f"array of {schema_text(schema.get('items', {}))}"
    return str(kind) + (f" ({schema['format']})" if "format" in schema else "")


def openapi_page() -> str:
    doc = openapi_document()
    out = [f"Generated from the OpenAPI {doc['openapi']} document of {doc['info']['title']} "
           f"{doc['info']['version']}, as `GET /schema/openapi.json` serves it.", ""]  # fmt: skip
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            out += [f"### `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [op["summary"], ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                for p in params:
                    out.append(f"| `{p['name']}` | {p['in']} | {cell(schema_text(p.get('schema', {})))} | "
                               f"{'yes' if p.get('required') else 'no'} | {cell(p.get('description', ''))} |")  # fmt: skip
                out.append("")
            body = op.get("requestBody")
            if body:
                kinds = ", ".join(f"`{m}` {schema_text(c.get('schema', {}))}" for m, c in body["content"].items())
                out += [f"Request body: {kinds}", ""]
            out += ["| status | description | body |", "|---|---|---|"]
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                kinds = ", ".join(f"`{m}` {schema_text(c.get('schema', {}))}" for m, c in content.items())
                out.append(f"| {status} | {cell(resp.get('description', ''))} | {cell(kinds)} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out += [f"### {name} {{#{name.lower()}}}", ""]
        if schema.get("description"):
            out += [schema["description"].strip(), ""]
        props = schema.get("properties")
        if not props:
            out += [f"Type: {schema_text(schema)}", ""]
            continue
        required = set(schema.get("required", []))
        out += ["| field | type | required | description |", "|---|---|---|---|"]
        for field, sub in props.items():
            out.append(f"| `{field}` | {cell(schema_text(sub))} | {'yes' if field in required else 'no'} | "
                       f"{cell(sub.get('description', ''))} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


# --- CLI --------------------------------------------------------------------------------------------------------


def cli_page() -> str:
    import argparse
    import os

    from service.cli.main import build_parser

    os.environ["COLUMNS"] = "110"
    parser = build_parser()
    out = ["```text", parser.format_help().rstrip(), "```"]

    def walk(p: argparse.ArgumentParser, words: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                        walk(sub, [*words, name])
                    else:
                        out.extend(["", f"## `engram {' '.join([*words, name])}`", "", "```text",
                                    sub.format_help().rstrip(), "```"])  # fmt: skip

    walk(parser, [])
    return "\n".join(out)


GENERATORS = {"settings": settings_table, "strategies": strategies_page, "openapi": openapi_page, "cli": cli_page}
