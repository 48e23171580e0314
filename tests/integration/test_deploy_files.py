"""docker-compose.yml and the Dockerfile use the commands and settings the tests run (no Docker here)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from service.cli.main import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_commands_and_settings_are_real() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "api-a", "api-b", "worker"} <= set(services)
    parser = build_parser()
    commands = {name: svc["command"] for name, svc in services.items() if "command" in svc}
    assert commands["migrate"] == ["migrate"] and commands["worker"] == ["worker"]
    for name in ("api-a", "api-b"):
        args = parser.parse_args(commands[name])
        assert args.command == "serve" and args.no_worker is True and args.host == "0.0.0.0"
    for cmd in commands.values():
        parser.parse_args(cmd)  # every command is one `engram` accepts
    fields = {f"ENGRAM_{name.upper()}" for name in Settings.model_fields}
    for svc in services.values():
        for var in svc.get("environment", {}):
            assert not var.startswith("ENGRAM_") or var in fields, var
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    url = services["api-a"]["environment"]["ENGRAM_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://")


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_engram_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["engram"]' in text and "USER 10001" in text and "HEALTHCHECK" in text
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))[len("CMD ") :]
    assert build_parser().parse_args(yaml.safe_load(cmd)).command == "serve"
