"""The benchmark and the ``engram`` command as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_benchmark_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = run("-m", "benchmarks.continual", "--strategies", "naive,lwf", "--scenarios", "task-incremental",
               "--seeds", "2", "--jobs", "1", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "lwf" in proc.stdout and "6 runs in" in proc.stdout  # joint runs beside every table
    rows = json.loads(out.read_text())
    assert [r["strategy"] for r in rows] == ["naive", "joint", "lwf"]
    for row in rows:
        assert row["scenario"] == "task-incremental" and row["seeds"] == [0, 1]
        assert {"acc_mean", "acc_std", "bwt_mean", "seconds_per_task", "joint"} <= set(row)
        assert 0.5 < row["acc_mean"] <= 1.0 and row["bwt_mean"] <= 0.01
        assert row["joint"] == rows[1]["acc_mean"]
    rows = [rows[0], rows[2]]
    assert rows[1]["acc_mean"] > rows[0]["acc_mean"]  # LwF forgets less than fine-tuning


def test_benchmark_refuses_unknown_names() -> None:
    proc = run("-m", "benchmarks.continual", "--strategies", "si")
    assert proc.returncode == 2 and "unknown strategy 'si'" in proc.stderr
    proc = run("-m", "benchmarks.continual", "--dataset", "mnist")
    assert proc.returncode == 2 and "--data-root" in proc.stderr


def test_engram_lists_strategies_and_exports_a_bundle(tmp_path: Path) -> None:
    proc = run("-m", "service.cli.main", "strategies")
    assert proc.returncode == 0
    assert "generative_replay" in proc.stdout and "cannot add classes" in proc.stdout
    script = (
        "from model_core.data import split_digits; from model_core.learner import Learner;"
        "from model_core.config import *; from model_core.checkpoint import save_bundle;"
        "b = split_digits(); L = Learner.create(NetworkSpec(InputSpec('image', 1, 8, 8)));"
        "L.learn(b.train[0], 'naive', None, TrainConfig(iterations=20));"
        f"save_bundle({str(tmp_path / 'v1')!r}, L)"
    )
    assert run("-c", script).returncode == 0
    proc = run("-m", "service.cli.main", "export", str(tmp_path / "v1"), str(tmp_path / "m.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 1000 and "max |onnx - torch|" in proc.stdout


def test_engram_benchmark_passes_every_argument_to_the_benchmark(tmp_path: Path) -> None:
    # through the installed console script (its path holds the venv's bin, not the checkout), a leading option
    # first: argparse's REMAINDER used to refuse "--json" before the benchmark saw it
    script = Path(sys.executable).parent / "engram"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli.main"]
    proc = subprocess.run([*cmd, "benchmark", "--json", str(tmp_path / "rows.json"), "--strategies", "si"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 2 and "unknown strategy 'si'" in proc.stderr, proc.stderr
