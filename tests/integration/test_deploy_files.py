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


def _stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions by stage name (``FROM ... AS name``), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            current = stages.setdefault(line.split()[-1], [])
        elif line and not line.startswith("#"):
            current.append(line)
    return stages


def _last(stage: list[str], instruction: str) -> str:
    return next(line for line in reversed(stage) if line.startswith(instruction + " "))[len(instruction) + 1 :]


def test_dockerfile_runs_engram_as_a_non_root_user() -> None:
    stages = _stages()
    assert list(stages)[-1] == "all"  # `docker build .` with no target: the one-host image, as before
    for name in ("api", "worker"):
        assert _last(stages[name], "ENTRYPOINT") == '["engram"]' and _last(stages[name], "USER") == "10001", name
    assert stages["all"] == [line for line in stages["all"] if not line.startswith("USER")]  # inherits the worker's
    parser = build_parser()
    assert parser.parse_args(yaml.safe_load(_last(stages["all"], "CMD"))).command == "serve"
    assert "HEALTHCHECK" in " ".join(stages["all"])


def test_each_role_has_a_target_installing_its_own_extra_and_running_its_command() -> None:
    """The API image installs the `serve` extra (no torch) and serves without a local worker; the worker image
    installs the `worker` extra and runs `engram worker`; compose builds each service from its role's target."""
    stages = _stages()
    installs = {name: " ".join(line for line in lines if "uv pip install" in line) for name, lines in stages.items()}
    assert "-e '.[serve]'" in installs["api"] and "torch" not in installs["api"]
    assert "-e '.[worker]'" in installs["worker"]
    parser = build_parser()
    api = parser.parse_args(yaml.safe_load(_last(stages["api"], "CMD")))
    assert api.command == "serve" and api.no_worker is True and api.host == "0.0.0.0"
    assert parser.parse_args(yaml.safe_load(_last(stages["worker"], "CMD"))).command == "worker"
    assert _last(stages["worker"], "HEALTHCHECK") == "NONE"  # no HTTP port in a worker
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, target in (("migrate", "api"), ("api-a", "api"), ("api-b", "api"), ("worker", "worker")):
        assert services[name]["build"]["target"] == target, name
        assert target in stages
