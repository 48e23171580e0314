"""Worker side of the default choice: train each candidate strategy on a classifier's first job and score it.

Which candidate wins, and why, is ``service.domain.strategy_choice.pick``; this module only trains and scores.
Scoring samples: the job's own held-out split (the gate's evaluation samples) when it has at least
``SMALL_EVAL`` samples; otherwise ``FOLDS``-fold cross-validation over the job's training and held-out samples
together (stratified), each sample scored once by candidates trained without it.

Cheap by construction: closed-form candidates (no gradient steps) train in seconds; a candidate that trains by
gradient steps is scored only when no closed-form candidate can learn the job, after at most ``CHOICE_STEPS`` in all (split over the folds when cross-validating; its
validation plateau may stop it sooner), which the report marks ``capped``. A closed-form winner scored on the held-out split is the job's candidate as trained
(nothing is trained twice); any other winner is trained again on the job's samples with its full budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from model_core.config import NetworkSpec, TrainConfig
from model_core.learner import Learner, LearnResult
from model_core.strategies.base import TrainingCancelled, create_strategy
from model_core.strategy_specs import default_candidates, default_strategy
from service.domain.strategy_choice import Trial, pick

SMALL_EVAL = 100  # held-out samples below which the choice cross-validates
FOLDS = 3
CHOICE_STEPS = 100  # the most optimiser steps a gradient candidate trains while being scored (over all folds)


@dataclass
class Choice:
    strategy: str  # the winner (the measured default when every candidate refused)
    report: dict[str, Any]  # the report's ``strategy_choice``
    learner: Learner | None = None  # the winner as trained on the job's samples, when it can be kept as is
    result: LearnResult | None = None


def choose(
    network: dict[str, Any],
    seed: int,
    train: dict[str, np.ndarray],
    held_out: dict[str, np.ndarray],
    config: TrainConfig,
    make_experience: Callable[[np.ndarray, np.ndarray], Any],
    share: Callable[[Learner], None],
    should_cancel: Callable[[], bool] | None = None,
) -> Choice:
    """Train and score every candidate on the job's data, then pick (see the module doc). ``share`` hands a fresh
    learner the job's frozen-feature cache; ``make_experience`` builds the job's experience from (x, labels)."""
    t0 = time.perf_counter()
    prior = default_strategy(network)
    spec = NetworkSpec.from_dict(network)
    cross = len(held_out["x"]) < SMALL_EVAL
    if cross:
        x = np.concatenate([train["x"], held_out["x"]])
        y = np.concatenate([train["label"].astype(str), held_out["label"].astype(str)])
        fold = stratified_folds(y, FOLDS, seed)
        splits = [(fold != k, fold == k) for k in range(FOLDS)]
    else:
        x, y = np.concatenate([train["x"], held_out["x"]]), np.concatenate([train["label"], held_out["label"]]).astype(str)
        is_eval = np.arange(len(x)) >= len(train["x"])
        splits = [(~is_eval, is_eval)]
    trials: list[Trial] = []
    kept: dict[str, tuple[Learner, LearnResult]] = {}
    # Closed-form candidates first; a gradient candidate is scored only when none of them can learn this job: its
    # score after a capped budget says little about how it ends, and training it would make every first job cost
    # what a gradient strategy costs (tens of seconds on 2 cores) where a closed-form head takes seconds
    names = sorted(default_candidates(network), key=lambda n: create_strategy(n).gradient_steps)
    for name in names:
        gradient = create_strategy(name).gradient_steps
        if gradient and any(t.score is not None for t in trials):
            trials.append(Trial(name, None, error="not scored: a closed-form candidate can learn this job, and a "
                                "gradient candidate's score after a capped budget would not say how it ends"))
            continue
        cfg = _capped(config, CHOICE_STEPS // len(splits)) if gradient else config
        correct = np.zeros(len(x), dtype=bool)
        scored = np.zeros(len(x), dtype=bool)
        start, steps, error = time.perf_counter(), 0, None
        for fit, score in splits:
            learner = Learner.create(spec, seed)
            share(learner)
            try:
                result = learner.learn(make_experience(x[fit], y[fit]), name, {}, cfg, None, should_cancel)
            except TrainingCancelled:
                raise
            except ValueError as exc:  # the strategy refuses this classifier or these samples
                error = str(exc)
                break
            steps = max(steps, result.train.steps)
            predicted = np.array(learner.labels, dtype=str)[learner.logits(torch.from_numpy(x[score])).argmax(1).numpy()]
            correct[score] = predicted == y[score]
            scored |= score
            if not cross:
                kept[name] = (learner, result)
        trials.append(Trial(name, None if error else correct[scored], time.perf_counter() - start, steps,
                            cfg != config and error is None, error))  # fmt: skip
    winner, why = pick(trials, prior)
    report = {
        "chosen": winner or prior,
        "why": why if winner else f"{why}; the measured default for this input, {prior}, runs",
        "method": (f"{FOLDS}-fold cross-validation over the job's {len(x)} samples (the held-out split has "
                   f"{len(held_out['x'])}, under {SMALL_EVAL})") if cross else
                  f"the job's held-out split ({len(held_out['x'])} samples)",
        "measured_default": prior,
        "candidates": [t.to_dict() for t in trials],
        "choice_steps": CHOICE_STEPS,
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    chosen = winner or prior
    trial = next((t for t in trials if t.strategy == chosen), None)
    if chosen in kept and trial is not None and not trial.capped:
        learner, result = kept[chosen]
        return Choice(chosen, report, learner, result)
    return Choice(chosen, report)


def _capped(config: TrainConfig, steps: int) -> TrainConfig:
    """The job's training configuration with at most ``steps`` optimiser steps."""
    if config.iterations is not None:
        return replace(config, iterations=min(config.iterations, steps))
    return replace(config, max_iterations=min(config.max_iterations, steps))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n,) fold index of each sample: every class dealt round-robin over the folds in a seeded order."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        out[rng.permutation(idx)] = np.arange(len(idx)) % folds
    return out
