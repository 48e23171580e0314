"""The client installs without the server: ``pip install engram`` pulls no torch, and the client, the CLI's
client commands and the wire schemas import with every server-side package missing."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("torch", "torchvision", "onnx", "onnxruntime", "litestar", "sqlalchemy", "alembic", "procrastinate",
               "timm", "boto3", "psycopg", "uvicorn", "scikit-learn", "pillow", "safetensors")  # fmt: skip

# Run in a fresh interpreter where importing any server-side package fails, as on a client-only install.
BLOCKED = """
import sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a client-only install)")
        return None

sys.meta_path.insert(0, Missing())
"""


def _name(requirement: str) -> str:
    return re.split(r"[\\[=<>~! ;]", requirement, maxsplit=1)[0].lower()


def _extra(project: dict[str, Any], extra: str) -> set[str]:
    """The names an extra installs, its references to the project's other extras (``engram[serve]``) expanded."""
    names: set[str] = set()
    for requirement in project["optional-dependencies"][extra]:
        if _name(requirement) == project["name"]:
            for inner in requirement.split("[", 1)[1].split("]", 1)[0].split(","):
                names |= _extra(project, inner.strip())
        else:
            names.add(_name(requirement))
    return names


def test_the_base_install_is_the_client_and_pulls_nothing_of_the_server() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert not base & set(SERVER_ONLY), base & set(SERVER_ONLY)
    server = _extra(project, "server")
    assert {"torch", "litestar", "sqlalchemy", "onnxruntime", "timm"} <= server


def test_each_role_has_its_own_extra_and_the_api_s_holds_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve, worker, server = (_extra(project, e) for e in ("serve", "worker", "server"))
    assert not serve & {"torch", "torchvision", "timm", "scikit-learn", "onnxscript"}, serve
    assert {"litestar", "uvicorn", "sqlalchemy", "alembic", "procrastinate", "onnxruntime", "onnx", "pillow"} <= serve
    assert {"torch", "torchvision", "timm", "onnx"} <= worker and serve <= worker
    assert server == serve | worker


def test_the_client_and_its_commands_import_without_the_server() -> None:
    blocked = {"torch", "torchvision", "onnx", "onnxruntime", "litestar", "sqlalchemy", "alembic", "procrastinate",
               "timm", "boto3", "psycopg", "uvicorn", "sklearn", "PIL", "safetensors"}  # fmt: skip
    code = BLOCKED.format(blocked=blocked) + """
from service.client import EngramClient
from service.cli.main import main
client = EngramClient("http://127.0.0.1:9", key="k")
assert main(["strategies"]) == 0
assert main(["serve", "--insecure"]) == 2  # says what to install instead of a traceback
print("client ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "client ok" in proc.stdout
    assert "pip install 'engram[server]'" in proc.stderr
