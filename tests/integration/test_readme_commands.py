"""Every command the README, CONTRIBUTING.md and the documentation site (docs/**/*.md) show, run as a user runs
it: a subprocess from the project root, with its smallest settings. A command whose real run needs photos, a
server and minutes runs with ``--help`` instead: it must start, and every flag a page passes it must be one it
accepts. The pages are parsed, so a command added to one that this file does not cover fails
``test_every_documented_command_is_covered``. Cost: about a minute on 2 cores (one 5-task run of the continual
benchmark, the rest ``--help``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Every page a reader is shown commands on: the README, CONTRIBUTING.md and the documentation site's sources
PAGES = (README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md")))
# "python -m benchmarks.NAME ARGS" and "engram SUB ARGS" (or "$E SUB ARGS" in the quick start, E=.venv/bin/engram),
# ARGS ending at the closing backtick, a comment or the end of the line
BENCHMARK_RE = re.compile(r"python -m benchmarks\.(\w+)([^`#\n]*)")
CLI_RE = re.compile(r"(?:\$E|\bengram) ([a-z][a-z-]*)([^`#\n]*)")
FLAG_RE = re.compile(r"(?<!\S)--[a-z][a-z0-9-]*")

# Every benchmark the README runs, with why a real run is out of reach here ("" where one runs below).
BENCHMARKS = {
    "binary_bench": "starts engram serve, trains a model and drives HTTP load: minutes",
    "class_growth": "teaches a real server up to 1,000 classes: tens of minutes",
    "decode_isolation": "starts engram serve and sends 256 MP image requests beside tiny ones: a minute",
    "embeddings": "embeds banking77 with the sentence encoder (the bench extra): minutes",
    "int8_backbone": "quantizes EfficientNet-Lite0 and embeds cifar10-mini photos twice: minutes",
    "int8_variants": "exports EfficientNet-Lite0 and quantizes it a dozen ways, 600 photos embedded: tens of minutes",
    "int8_serving": "starts engram serve several times, teaches photo classifiers and drives HTTP load: minutes",
    "ort_options": "times a backbone graph under three session options: a minute",
    "ort_gap": "times the photo backbone in process back to back and after pauses: a minute",
    "shared_backbone": "starts engram serve and teaches photo classifiers: minutes",
    "continual": "",  # test_continual_writes_its_json
    "export_parity": "trains and exports an MLP, a CNN and a ResNet-18: a minute of CPU",
    "gate_truth": "teaches every stream to a real server: minutes, and mnist-5k photos",
    "job_stages": "runs each stage of a learning job in process as a classifier grows to 1,000 classes: minutes",
    "learn_speed": "starts engram serve and trains through it: minutes (photos with --photos)",
    "novelty": "fits two strategies on three streams, photos through the pretrained backbone: minutes",
    "pretrained_export": "exports and times EfficientNet-Lite0 at three resolutions: minutes",
    "serve_bench": "starts several servers and drives HTTP load against each: minutes",
    "sweeps": "3 seeds of every sweep on the 5-task stream: minutes",
    "storage_growth": "teaches 5 photo tasks (or 50 generated) in three store layouts: minutes",
    "text_stream": "teaches banking77 messages to a real server through the CLI: tens of minutes",
    "unequal_heads": "embeds 5,000 cifar10-mini photos with EfficientNet-Lite0: a minute",
    "workers_bench": "starts engram serve with 1, 2, 3 workers under load: minutes",
}
# The CLI: the arguments before --help for each subcommand the README names (server calls need a server: the
# e2e tests run them against one); ``strategies`` and ``migrate`` run for real below.
CLI = {
    "audit": ("audit",),
    "backup": ("backup",),
    "benchmark": ("benchmark",),  # its --help is the continual benchmark's own
    "classifiers": ("classifiers", "create"),
    "export": ("export",),
    "import": ("import",),
    "learn": ("learn",),
    "migrate": ("migrate",),
    "predict": ("predict",),
    "promote": ("promote",),
    "restore": ("restore",),
    "rollback": ("rollback",),
    "serve": ("serve",),
    "storage": ("storage",),
    "strategies": ("strategies",),
    "unknowns": ("unknowns", "export"),
    "versions": ("versions",),
    "worker": ("worker",),
}

# Subcommands whose flags the pages pass under the same first word: their --help is read with the one above.
ALSO = {"classifiers": (("classifiers", "delete"), ("classifiers", "retention"))}


def readme_flags(pattern: re.Pattern[str], pages: tuple[Path, ...] = PAGES) -> dict[str, set[str]]:
    """Each command the pages name, with the flags they pass it anywhere."""
    found: dict[str, set[str]] = {}
    for page in pages:
        for name, rest in pattern.findall(page.read_text() if page.exists() else ""):
            found.setdefault(name, set()).update(FLAG_RE.findall(rest))
    return found


def unknown_flags(pattern: re.Pattern[str], name: str, help_text: str, pages: tuple[Path, ...] = PAGES) -> list[str]:
    """The flags the pages pass command ``name`` that its ``--help`` does not list."""
    return sorted(f for f in readme_flags(pattern, pages).get(name, set()) if not takes(help_text, f))


def takes(help_text: str, flag: str) -> bool:
    """``flag`` is one of the options ``help_text`` lists (--seed is not --seeds)."""
    return re.search(rf"{re.escape(flag)}(?![\w-])", help_text) is not None


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # argparse's usage lines unwrapped
    return subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def engram(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``engram`` command when the venv has it, else the module it runs."""
    script = Path(sys.executable).parent / "engram"
    return run(str(script), *args) if script.exists() else run(sys.executable, "-m", "service.cli.main", *args)


def test_every_documented_command_is_covered() -> None:
    assert len(PAGES) > 20, f"the documentation site's pages were not found: {PAGES}"
    benchmarks, commands = readme_flags(BENCHMARK_RE), readme_flags(CLI_RE)
    assert benchmarks and commands, "the pages' commands were not found: has their form changed?"
    missing = sorted(set(benchmarks) - set(BENCHMARKS))
    assert not missing, f"the docs run benchmarks this file does not: {missing}; add them to BENCHMARKS"
    missing = sorted(set(commands) - set(CLI))
    assert not missing, f"the docs show engram commands this file does not run: {missing}; add them to CLI"
    # the site's pages are read, not only the README: commands that appear in docs/ alone are found
    site_only = readme_flags(CLI_RE, tuple(p for p in PAGES if "docs" in p.parts))
    assert "promote" in site_only and "--force" in site_only["promote"], site_only


# Every command's --help in one subprocess (each run as ``python -m`` runs it, as __main__ with its argv): one
# interpreter importing torch once instead of forty, a minute of the suite's time on 2 cores
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out = {}
for key, module, argv in json.loads(sys.argv[1]):
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    sys.argv = argv
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException as exc:  # a command that fails to start: its own failure, not the others'
            code, _ = 1, stderr.write(repr(exc))
    out[key] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess[str]]:
    """Each benchmark's (``bench:NAME``) and each engram command's (``cli:WORDS``) ``--help``, as it prints it."""
    calls = [(f"bench:{name}", f"benchmarks.{name}", [f"{name}.py", "--help"]) for name in sorted(BENCHMARKS)]
    for words in [*CLI.values(), *(w for more in ALSO.values() for w in more)]:
        calls.append((f"cli:{' '.join(words)}", "service.cli.main", ["engram", *words, "--help"]))
    proc = run(sys.executable, "-c", HELP_RUNNER, json.dumps(calls), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return {key: subprocess.CompletedProcess([key], code, out, err) for key, (code, out, err) in found.items()}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_readme_benchmark_starts_and_takes_the_readme_flags(
    name: str, helps: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    proc = helps[f"bench:{name}"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    unknown = unknown_flags(BENCHMARK_RE, name, proc.stdout)
    assert not unknown, f"the docs pass benchmarks.{name} flags it does not take: {unknown}"


@pytest.mark.parametrize("name", sorted(CLI))
def test_each_readme_cli_command_starts_and_takes_the_readme_flags(
    name: str, helps: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    proc = helps[f"cli:{' '.join(CLI[name])}"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"usage: engram {' '.join(CLI[name])}" in proc.stdout
    help_text = proc.stdout + "".join(helps[f"cli:{' '.join(words)}"].stdout for words in ALSO.get(name, ()))
    unknown = unknown_flags(CLI_RE, name, help_text)
    assert not unknown, f"the docs pass engram {name} flags it does not take: {unknown}"


def test_the_engram_script_starts() -> None:
    """The installed ``engram`` entry point itself (the commands above run its module in one process)."""
    proc = engram("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: engram" in proc.stdout


def test_a_documented_flag_that_the_command_lost_is_caught(tmp_path: Path) -> None:
    # The check above against a command whose flag was removed: the real `engram learn --help`, less the
    # --retention line, as if the option were deleted from the parser. The real pages pass --retention, so it fails.
    help_text = engram("learn", "--help").stdout
    assert takes(help_text, "--retention") and not unknown_flags(CLI_RE, "learn", help_text)
    without = "\n".join(line for line in help_text.splitlines() if "--retention" not in line)
    assert unknown_flags(CLI_RE, "learn", without) == ["--retention"]
    # and a doctored page in a temporary folder documenting a flag no command has: caught, on that page alone
    page = tmp_path / "guide.md"
    page.write_text((ROOT / "docs" / "getting-started" / "photos.md").read_text().replace(
        "--task household --retention discard", "--task household --retention discard --keep-forever"))  # fmt: skip
    assert unknown_flags(CLI_RE, "learn", help_text, (page,)) == ["--keep-forever"]


@pytest.mark.slow
def test_continual_writes_its_json(tmp_path: Path) -> None:
    # the README's "python -m benchmarks.continual --json results.json" on one scenario and one seed, with the
    # cheapest strategy and one that does not apply to the digits (skipped, saying why)
    out = tmp_path / "results.json"
    proc = run(sys.executable, "-m", "benchmarks.continual", "--json", str(out), "--strategies", "analytic,class_models",
               "--scenarios", "class-incremental", "--seeds", "1", "--jobs", "1", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for header in ("strategy", "scenario", "avg acc (mean ± std)", "joint", "BWT", "forgetting", "s / task"):
        assert header in proc.stdout, proc.stdout
    assert (
        "skipped analytic (class-incremental) on digits" in proc.stdout and "frozen pretrained backbone" in proc.stdout
    )
    assert "2 runs in" in proc.stdout  # joint runs beside every strategy
    rows = json.loads(out.read_text())
    assert [(r["strategy"], r["scenario"], r["seeds"]) for r in rows] == [
        ("joint", "class-incremental", [0]),
        ("class_models", "class-incremental", [0]),
    ]
    assert rows[1]["acc_mean"] > 0.97  # 0.991


def test_engram_strategies_lists_every_strategy() -> None:
    proc = engram("strategies")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [line.split(":", 1)[0] for line in proc.stdout.splitlines() if line.strip()]
    assert {"naive", "ewc", "replay", "generative_replay", "class_models"} <= set(names)
    assert all("parameters" in line for line in proc.stdout.splitlines() if line.strip())


def test_engram_migrate_creates_the_schema(tmp_path: Path) -> None:
    proc = engram("migrate", "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "at the newest schema" in proc.stdout + proc.stderr
    assert (tmp_path / "data" / "engram.db").exists()
