"""Run a learner through a stream of experiences and fill the accuracy matrix."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from model_core.config import NetworkSpec, TrainConfig
from model_core.data import SplitBenchmark
from model_core.learner import Learner
from model_core.metrics import ContinualMetrics, summarise


@dataclass(frozen=True)
class StreamResult:
    metrics: ContinualMetrics
    seconds: float  # wall time of training and evaluation
    learner: Learner
    task_seconds: list[float] = field(default_factory=list)  # training time of each experience




def run_stream(
    benchmark: SplitBenchmark,
    spec: NetworkSpec,
    strategy: str,
    config: TrainConfig,
    params: Mapping[str, Any] | None = None,
    features: Mapping[bytes, Tensor] | None = None,
) -> StreamResult:
    """Learn every training experience in order; after each, test on every task learned so far.

    R[i][j] for j > i is NaN (that task's classes are not known yet). ``features``: frozen-backbone features
    computed before (``Learner.feature_cache`` of an earlier learner of the same backbone), so several runs
    compute each sample's features once. A strategy that refuses the stream raises ValueError before learning.
    """
    start = time.perf_counter()
    learner = Learner.create(spec, seed=config.seed)
    learner.feature_cache.update(features or {})
    matrix: list[list[float]] = []
    task_seconds = []
    for i, exp in enumerate(benchmark.train):
        began = time.perf_counter()
        learner.learn(exp, strategy, params, config)
        task_seconds.append(time.perf_counter() - began)
        matrix.append(
            [learner.accuracy(test, config.device) if j <= i else float("nan") for j, test in enumerate(benchmark.test)]
        )
    return StreamResult(summarise(matrix), time.perf_counter() - start, learner, task_seconds)
