"""The new task's accuracy cross-validated, for the gate, when its held-out split is too small to judge.

A few-shot job holds out 20% of each class: 10 samples a class of 2 classes leave the gate 4 to judge the new
task on, and one sample more or less right moves the accuracy by 0.25. On 4 samples a task that a nearest class
mean learns to 0.75 reads 0.5, whose 95% interval reaches chance, and the gate rejected it as "cannot be told
from chance" (mnist-5k, 10 a class, tasks of 2: three of five tasks rejected). When the new task has fewer than
``SMALL_EVAL`` held-out samples, the gate's floor is judged instead on ``FOLDS``-fold cross-validation over
the task's training and held-out samples together (stratified, seeded): the parent learns each fold's other
samples with the job's strategy and scores the fold's samples, so every sample of the task is scored once by a
candidate that never saw it; the nearest-class-mean reference is scored on the same folds. Every other part of
the gate (the old tasks, the confusion with new classes, the served version) still reads the held-out split.

Cheap by construction, as the default choice's cross-validation is (``service.jobs.training_choice``): only a
strategy with no gradient steps (a closed-form head: refitting it is the cost of its learning) is cross-checked,
and only when the floor comes from the data (a user's ``new_task_floor`` is the user's to judge by). A fold that
the strategy refuses (too few samples of a class in it) leaves the held-out verdict, and the report says why.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from model_core.config import TrainConfig
from model_core.learner import Learner
from model_core.strategies.base import TrainingCancelled, create_strategy
from service.domain.new_task import CrossChecked, nearest_mean_accuracy
from service.jobs.training_choice import FOLDS, SMALL_EVAL, stratified_folds


def wanted(strategy: str | None, held_out: int, floor_setting: float | None, classes: int) -> bool:
    """Whether the new task is cross-checked: a closed-form ``strategy`` (None: still to be chosen, which may be
    one), fewer than ``SMALL_EVAL`` held-out samples, a floor from the data, and more than one class to choose among
    (one class has no floor)."""
    if floor_setting is not None or held_out >= SMALL_EVAL or classes < 2:
        return False
    if strategy is None:
        return True
    try:
        return not create_strategy(strategy).gradient_steps
    except ValueError:
        return False


def snapshot(learner: Learner) -> Learner:
    """A copy of ``learner`` to fit folds from: its weights and strategy states copied, its frozen-feature cache and
    feature function shared (features never depend on what a fold learns)."""
    cache, fn = learner.feature_cache, learner.feature_fn
    learner.feature_cache, learner.feature_fn = {}, None
    try:
        out = copy.deepcopy(learner)
    finally:
        learner.feature_cache, learner.feature_fn = cache, fn
    out.feature_cache, out.feature_fn = cache, fn
    return out


def cross_check(
    parent: Learner,
    strategy: str,
    params: dict[str, Any],
    config: TrainConfig,
    train: dict[str, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    others: tuple[np.ndarray, np.ndarray],
    inputs: Callable[[np.ndarray], np.ndarray],
    make_experience: Callable[[np.ndarray, np.ndarray], Any],
    predict: Callable[[Learner, np.ndarray, np.ndarray], np.ndarray],
    seed: int,
    should_cancel: Callable[[], bool] | None = None,
) -> CrossChecked | str:
    """Cross-validate the job's new task (see the module doc) from ``parent`` (left unchanged: each fold learns a
    copy). ``others``: the old classes' samples the reference's means also come from (class-incremental);
    ``inputs``: what the head sees of a batch (frozen-backbone features, or the flattened input); ``predict``: a
    learner's labels for (x, labels) as the gate predicts them (``service.jobs.training.predictions``). Returns the
    result, or why the folds could not be fitted."""
    t0 = time.perf_counter()
    x = np.concatenate([train["x"], held_out[0]])
    y = np.concatenate([train["label"].astype(str), held_out[1].astype(str)])
    fold = stratified_folds(y, FOLDS, seed)
    correct = np.zeros(len(x), dtype=bool)
    reference_right = 0.0
    features = inputs(x)
    other_x, other_y = inputs(others[0]) if len(others[0]) else features[:0], others[1].astype(str)
    for k in range(FOLDS):
        fit, score = fold != k, fold == k
        if not score.any():
            continue
        learner = snapshot(parent)
        try:
            learner.learn(make_experience(x[fit], y[fit]), strategy, params, config, None, should_cancel)
        except TrainingCancelled:
            raise
        except ValueError as exc:  # the strategy refuses a fold (a class too small in it)
            return f"fold {k + 1} of {FOLDS} could not be fitted: {exc}"
        correct[score] = predict(learner, x[score], y[score]) == y[score]
        ref = nearest_mean_accuracy(np.concatenate([features[fit], other_x]), np.concatenate([y[fit], other_y]),
                                    features[score], y[score])  # fmt: skip
        reference_right += (ref or 0.0) * int(score.sum())  # its samples right in this fold
    method = (f"{FOLDS}-fold cross-validation over the task's {len(x)} samples (its held-out split has "
              f"{len(held_out[0])}, under {SMALL_EVAL}): each scored by the parent taught the other folds")  # fmt: skip
    return CrossChecked(correct, reference_right / len(x), method, time.perf_counter() - t0)
