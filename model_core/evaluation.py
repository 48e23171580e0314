"""Run a learner through a stream of experiences and fill the accuracy matrix."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_core.config import NetworkSpec, TrainConfig
from model_core.data import SplitBenchmark
from model_core.learner import Learner
from model_core.metrics import ContinualMetrics, summarise


@dataclass(frozen=True)
class StreamResult:
    metrics: ContinualMetrics
    seconds: float  # wall time of training and evaluation
    learner: Learner


def run_stream(
    benchmark: SplitBenchmark,
    spec: NetworkSpec,
    strategy: str,
    config: TrainConfig,
    params: Mapping[str, Any] | None = None,
) -> StreamResult:
    """Learn every training experience in order; after each, test on every task learned so far.

    R[i][j] for j > i is NaN (that task's classes are not known yet).
    """
    start = time.perf_counter()
    learner = Learner.create(spec, seed=config.seed)
    matrix: list[list[float]] = []
    for i, exp in enumerate(benchmark.train):
        learner.learn(exp, strategy, params, config)
        matrix.append(
            [learner.accuracy(test, config.device) if j <= i else float("nan") for j, test in enumerate(benchmark.test)]
        )
    return StreamResult(summarise(matrix), time.perf_counter() - start, learner)
