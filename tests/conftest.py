from __future__ import annotations

import pytest
import torch

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.data import SplitBenchmark, split_digits

DIGIT_INPUT = InputSpec("image", 1, 8, 8)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Small models train faster on one thread, and tests stay deterministic across machines.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> SplitBenchmark:
    return split_digits()


def digit_spec(scenario: str = "class-incremental", backbone: str = "mlp") -> NetworkSpec:
    return NetworkSpec(DIGIT_INPUT, backbone=backbone, scenario=scenario)  # type: ignore[arg-type]


FAST = TrainConfig(iterations=30, batch_size=32, device="cpu")
