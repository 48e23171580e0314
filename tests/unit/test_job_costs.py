"""What a job reads per task stays linear in the classes learnt: the calibrations fit on a bounded subsample, and
the parent's labels for its own suite are read from its version rather than predicted again."""

from __future__ import annotations

import numpy as np
import torch

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.learner import Learner
from service.jobs.training import (
    CALIBRATION_SAMPLES,
    SERVED,
    calibration_rows,
    experience,
    merge_suite,
    parent_scores,
    predictions,
    task_slices,
    with_served,
)


def test_the_calibrations_fit_on_the_whole_suite_up_to_the_cap_and_a_seeded_subsample_beyond() -> None:
    assert calibration_rows(10).tolist() == list(range(10))
    assert len(calibration_rows(CALIBRATION_SAMPLES)) == CALIBRATION_SAMPLES
    big = calibration_rows(5 * CALIBRATION_SAMPLES)
    assert len(big) == CALIBRATION_SAMPLES and len(np.unique(big)) == CALIBRATION_SAMPLES
    assert np.all(np.diff(big) > 0) and big.max() < 5 * CALIBRATION_SAMPLES  # sorted rows of the suite
    assert np.array_equal(big, calibration_rows(5 * CALIBRATION_SAMPLES))  # the same rows every time
    # spread over the whole suite (the newest tasks' samples come last), not its first rows
    assert big.min() < CALIBRATION_SAMPLES and big.max() > 4 * CALIBRATION_SAMPLES


def _two_tasks() -> tuple[Learner, dict[str, np.ndarray], list[str], np.ndarray]:
    """A class_models learner after task t1 (vectors), the suite with t2's evaluation rows appended, and the labels
    the t1 version stored for its own suite."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, size=(6, 8))
    y = np.repeat(np.arange(6), 30)
    x = (means[y] + rng.normal(size=(len(y), 8))).astype(np.float32)
    labels = np.array([f"c{v}" for v in y])
    held = np.zeros(len(y), dtype=bool)
    held[np.arange(len(y)) % 5 == 0] = True
    learner = Learner.create(NetworkSpec(input=InputSpec(kind="vector", dim=8)), 0)
    first = (y < 3) & ~held
    learner.learn(experience("t1", x[first], labels[first]), "class_models", {}, TrainConfig())
    suite = merge_suite({}, {"x": x[(y < 3) & held], "label": labels[(y < 3) & held]}, "t1")
    own = predictions(learner, *task_slices(suite, ["t1"])["t1"], "t1", len(learner.labels))
    stored = with_served(suite, {"t1": own})[SERVED]
    suite = merge_suite(suite, {"x": x[(y >= 3) & held], "label": labels[(y >= 3) & held]}, "t2")
    return learner, suite, ["t1", "t2"], stored


def test_the_parent_is_scored_from_the_labels_its_version_stored_and_only_new_rows_are_predicted() -> None:
    learner, suite, tasks, stored = _two_tasks()
    fresh = parent_scores(learner, suite, tasks)
    cached = parent_scores(learner, suite, tasks, stored)
    assert fresh.predicted["t2"] is None and cached.predicted["t2"] is None  # a task the parent lacks
    assert np.array_equal(fresh.predicted["t1"], cached.predicted["t1"])
    assert np.array_equal(fresh.correct["t1"], cached.correct["t1"])
    calls = []
    real = learner.logits
    learner.logits = lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k)  # type: ignore[method-assign]
    parent_scores(learner, suite, tasks, stored)
    assert sum(calls) <= 32  # the check's rows only: none of the suite predicted again


def test_stored_labels_that_are_not_the_parents_are_predicted_again() -> None:
    learner, suite, tasks, stored = _two_tasks()
    wrong = np.array(["c0"] * len(stored))  # another model's labels (or none that fit): not trusted
    fresh = parent_scores(learner, suite, tasks)
    assert np.array_equal(parent_scores(learner, suite, tasks, wrong).predicted["t1"], fresh.predicted["t1"])
    too_many = np.concatenate([stored, stored, stored])  # more rows than the suite: another suite's
    assert np.array_equal(parent_scores(learner, suite, tasks, too_many).predicted["t1"], fresh.predicted["t1"])


def test_the_generators_quality_figures_take_100_samples_a_class_up_to_100_classes_then_a_shared_budget() -> None:
    from model_core.strategies.generative_replay import QUALITY_BUDGET, QUALITY_MIN, QUALITY_SAMPLES, quality_samples

    assert [quality_samples(c) for c in (1, 10, 100)] == [QUALITY_SAMPLES] * 3
    assert quality_samples(1000) * 1000 <= QUALITY_BUDGET and quality_samples(1000) >= QUALITY_MIN
    assert quality_samples(10 * QUALITY_BUDGET) == QUALITY_MIN  # never fewer a class, however many classes
    # the replayed samples scored per job stop growing with the classes (each is scored over every class)
    assert max(c * quality_samples(c) for c in range(1, QUALITY_BUDGET // QUALITY_MIN + 1)) <= QUALITY_BUDGET


def test_the_workers_feature_caches_keep_the_newest_features_within_their_byte_budget() -> None:
    from collections import OrderedDict

    from service.jobs.training import trim_features

    def cache(n: int, tag: int) -> dict[bytes, torch.Tensor]:
        return {bytes([tag, i]): torch.zeros(256) for i in range(n)}  # 1 KB each

    caches: OrderedDict[str, dict[bytes, torch.Tensor]] = OrderedDict(old=cache(6, 0), new=cache(6, 1))
    trim_features(caches, 8 << 10)  # 12 KB held, 8 KB allowed: the least recently used backbone's oldest go first
    assert list(caches["old"]) == [bytes([0, 4]), bytes([0, 5])] and len(caches["new"]) == 6
    trim_features(caches, 3 << 10)
    assert caches["old"] == {} and list(caches["new"]) == [bytes([1, i]) for i in (3, 4, 5)]
    trim_features(caches, 100 << 10)  # within budget: nothing goes
    assert len(caches["new"]) == 3
