"""Quality floors on fixed seeds (one run each; the benchmark reports means over seeds)."""

from __future__ import annotations

import pytest

from model_core.config import TrainConfig
from model_core.data import SplitBenchmark
from model_core.evaluation import run_stream
from tests.conftest import digit_spec

PROTOCOL = TrainConfig(iterations=300, batch_size=64, lr=1e-3, seed=0, device="cpu")


@pytest.mark.slow
def test_class_incremental_generative_replay_beats_naive_by_far(digits: SplitBenchmark) -> None:
    naive = run_stream(digits, digit_spec(), "naive", PROTOCOL).metrics
    gr = run_stream(digits, digit_spec(), "generative_replay", PROTOCOL).metrics
    assert naive.average_accuracy < 0.3  # one task's worth: the known failure of fine-tuning
    assert gr.average_accuracy >= 0.88  # no stored samples; mean of seeds 0-2: python -m benchmarks.continual
    assert gr.average_accuracy - naive.average_accuracy > 0.5


@pytest.mark.slow
def test_class_incremental_replay_and_joint_keep_old_classes(digits: SplitBenchmark) -> None:
    replay = run_stream(digits, digit_spec(), "replay", PROTOCOL).metrics
    joint = run_stream(digits, digit_spec(), "joint", PROTOCOL).metrics
    assert replay.average_accuracy >= 0.9
    assert joint.average_accuracy >= 0.94
    assert replay.bwt > -0.1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ewc", "lwf", "mas"])
def test_task_incremental_regularisers_beat_naive(strategy: str, digits: SplitBenchmark) -> None:
    spec = digit_spec("task-incremental")
    naive = run_stream(digits, spec, "naive", PROTOCOL).metrics
    result = run_stream(digits, spec, strategy, PROTOCOL).metrics
    assert result.average_accuracy >= 0.95
    assert result.average_accuracy > naive.average_accuracy + 0.05
