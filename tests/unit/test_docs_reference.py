"""The documentation site's generated reference (docs/hooks/docs_hooks.py, run by ``mkdocs build``): every setting, every
strategy parameter and every served operation is on its page, and a setting nobody explained fails the build."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from model_core.strategy_specs import SPECS
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))
import docs_hooks  # noqa: E402  (docs/hooks/ is not a package)


def test_the_configuration_page_lists_every_setting_with_its_comment() -> None:
    table = docs_hooks.settings_table()
    for name in Settings.model_fields:
        assert f"| `ENGRAM_{name.upper()}` |" in table, name
    # the meaning comes from the source's comment, the default from the class
    assert "| `ENGRAM_MAX_TRAIN_STEPS` | `5000` (`int`) | The most optimiser steps a job may take" in table, table
    # angle brackets outside code are shown, not taken for HTML tags
    assert "default: sqlite:///&lt;data_dir&gt;/engram.db" in table, table


def test_a_setting_without_a_comment_fails_the_build(tmp_path: Path) -> None:
    source = (ROOT / "service" / "settings.py").read_text()
    line = '    queue: str = "gpu"  # procrastinate queue the training jobs go to (PostgreSQL deployments)\n'
    assert line in source
    doctored = tmp_path / "settings.py"
    doctored.write_text(source.replace(line, '    queue: str = "gpu"\n'))
    with pytest.raises(ValueError, match=r"Settings\.queue has no comment"):
        docs_hooks.settings_table(doctored)


def test_the_strategies_page_has_every_strategy_and_parameter_of_get_strategies() -> None:
    page = docs_hooks.strategies_page()
    for name, spec in SPECS.items():
        assert f"## `{name}` {{#{name}}}" in page, name
        for key in spec.defaults:
            assert f"| `{key}` |" in page, (name, key)
    # a parameter's comment in model_core/strategy_specs.py is its meaning on the page
    assert "| `margin` | `0.5` |  | GEM's \"memory strength\"" in page


def test_the_api_page_renders_every_operation_the_app_serves() -> None:
    doc = docs_hooks.openapi_document()
    page = docs_hooks.openapi_page()
    operations = [(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in {"get", "post", "delete"}]
    assert len(operations) >= 15, operations
    for method, path in operations:
        assert f"### `{method} {path}`" in page, (method, path)
    for schema in doc["components"]["schemas"]:
        assert f"### {schema} {{#{schema.lower()}}}" in page, schema
    assert "`POST /v1/classifiers/{name}/learn`" in page and "[ClassifierCreate](#classifiercreate)" in page


def test_lists_nested_as_github_reads_them_nest_on_the_site() -> None:
    page = "- a\n  - b\n    more of b\n\n  ```bash\n  engram versions x\n  ```\n\n```text\n  tree/\n```\n!!! note\n    body\n"
    assert docs_hooks.nest_lists(page) == (
        "- a\n    - b\n        more of b\n\n    ```bash\n    engram versions x\n    ```\n\n```text\n  tree/\n```\n"
        "!!! note\n    body\n"
    )
    assert docs_hooks.nest_lists("Tests:\n- one\n- two\nA table:\n| a |\n|---|\n") == (
        "Tests:\n\n- one\n- two\nA table:\n\n| a |\n|---|\n"
    )
