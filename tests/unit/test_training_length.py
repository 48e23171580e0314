"""Training length follows the data: the step budget grows with the samples and classes, and training stops when
its validation loss stops improving (the reason is asserted, never the time)."""

from __future__ import annotations

import torch

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.data import Experience
from model_core.learner import Learner
from model_core.trainer import MIN_STEPS, step_budget


def blobs(n: int, classes: tuple[str, ...], spread: float, seed: int) -> Experience:
    """``n`` 16-dim samples of Gaussian blobs, one per class, ``spread`` apart."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(classes)
    centres = torch.randn(len(classes), 16, generator=g) * spread
    x = centres[y] + torch.randn(n, 16, generator=g)
    return Experience("t", x, y, classes)


def learn(exp: Experience, iterations: int | None = None) -> dict[str, object]:
    learner = Learner.create(NetworkSpec(InputSpec("vector", dim=16)), seed=0)
    result = learner.learn(exp, "naive", None, TrainConfig(iterations=iterations, device="cpu"))
    return result.train.summary()


def test_the_budget_grows_with_samples_and_classes_and_keeps_its_bounds() -> None:
    assert step_budget(100, 64, 2, cap=5000) == MIN_STEPS
    assert step_budget(10_000, 64, 2, cap=5000) > step_budget(1_000, 64, 2, cap=5000) > MIN_STEPS
    assert step_budget(1_000, 64, 40, cap=5000) > step_budget(1_000, 64, 2, cap=5000)
    assert step_budget(10**6, 64, 2, cap=3000) == 3000  # a deployment's bound wins


def test_ten_times_the_samples_take_more_steps() -> None:
    small, large = learn(blobs(300, ("a", "b", "c"), 1.0, 0)), learn(blobs(3000, ("a", "b", "c"), 1.0, 0))
    assert large["budget"] > small["budget"]  # type: ignore[operator]
    assert large["steps"] > small["steps"], (small, large)  # type: ignore[operator]


def test_a_job_that_has_converged_stops_on_its_plateau() -> None:
    # two far-apart blobs: separated within a few dozen steps, long before the budget runs out
    out = learn(blobs(2000, ("a", "b"), 8.0, 1))
    assert out["stopped"] == "plateau" and out["improving"] is False
    assert out["steps"] < out["budget"] and out["best_step"] <= out["steps"]  # type: ignore[operator]
    assert out["val_rows"] == 200


def test_requested_steps_are_run_in_full_and_say_whether_more_would_help() -> None:
    out = learn(blobs(2000, ("a", "b"), 8.0, 1), iterations=500)
    assert out["stopped"] == "requested" and out["steps"] == out["budget"] == 500 and out["val_rows"] == 0
