"""The new task cross-validated for the gate when its held-out split is small (service.jobs.training_cross_check)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.learner import Learner
from service.domain.new_task import CrossChecked
from service.jobs import training_cross_check as cross_check
from service.jobs.training import experience, predictions, reference_inputs

SPEC = NetworkSpec(InputSpec("vector", dim=64), backbone="mlp")
CONFIG = TrainConfig(device="cpu")


def _digits(classes: tuple[int, ...], per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(d.target == c), per_class, replace=False) for c in classes])
    return (d.data[idx] / 16).astype(np.float32), d.target[idx].astype(str)


def _parent() -> Learner:
    """A class_models learner that knows digits 0 and 1."""
    learner = Learner.create(SPEC, seed=0)
    x, y = _digits((0, 1), 40, seed=1)
    learner.learn(experience("t1", x, y), "class_models", {}, CONFIG)
    return learner


def _check(parent: Learner, x: np.ndarray, y: np.ndarray) -> CrossChecked | str:
    train, held = {"x": x[:16], "label": y[:16]}, (x[16:], y[16:])
    slices = {"t1": _digits((0, 1), 10, seed=2), "t2": held}
    _, others, inputs = reference_inputs(parent, "t2", train, slices)
    return cross_check.cross_check(parent, "class_models", {}, CONFIG, train, held, others, inputs,
                                   lambda a, b: experience("t2", a, b),
                                   lambda lr, a, b: predictions(lr, a, b, "t2", len(lr.labels)).after, seed=0)  # fmt: skip


def test_every_sample_of_the_task_is_scored_once_and_the_parent_is_left_as_it_was() -> None:
    parent = _parent()
    before = {k: v.clone() for k, v in parent.model.state_dict().items()}
    labels = list(parent.labels)
    x, y = _digits((2, 3), 10, seed=3)  # 10 a class: 16 to train on, 4 held out
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    checked = _check(parent, x, y)
    assert isinstance(checked, CrossChecked)
    assert len(checked.correct) == 20 and "3-fold" in checked.method
    # digits 2 and 3 among 0-3 from 6-7 samples a class: well off chance (0.25), as is the nearest class mean
    assert checked.correct.mean() > 0.6 and checked.reference is not None and checked.reference > 0.6
    assert parent.labels == labels and all(torch.equal(before[k], v) for k, v in parent.model.state_dict().items())

    shuffled = y[np.random.default_rng(1).permutation(len(y))]
    at_chance = _check(parent, x, shuffled)
    assert isinstance(at_chance, CrossChecked) and at_chance.correct.mean() < checked.correct.mean()


def test_a_fold_the_strategy_refuses_leaves_the_held_out_verdict_and_says_why() -> None:
    parent = _parent()
    x, y = _digits((2, 3), 7, seed=3)  # a fold fits 4-5 samples of a class: class_models needs 5 of a new one
    got = _check(parent, x[np.argsort(y, kind="stable")], np.sort(y))
    assert isinstance(got, str) and "could not be fitted" in got


def test_only_a_closed_form_strategy_with_a_small_held_out_split_and_a_floor_from_the_data_is_cross_checked() -> None:
    assert cross_check.wanted("class_models", 20, None, 4) and cross_check.wanted("analytic", 99, None, 2)
    assert not cross_check.wanted("class_models", 100, None, 4)  # enough held-out samples to judge on
    assert not cross_check.wanted("class_models", 20, 0.3, 4)  # the user's floor
    assert not cross_check.wanted("class_models", 20, None, 1)  # one class: no floor
    assert not cross_check.wanted("ewc", 20, None, 4)  # gradient steps: three more trainings
    assert cross_check.wanted(None, 20, None, 2)  # a first job's strategy still to be chosen may be closed-form
