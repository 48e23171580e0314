"""Scores that mean what they say: one temperature per version, fitted on its held-out samples.

Teams route low-confidence predictions to a person, so the served score (the softmax's top probability) must be
right about as often as it says. A ridge head's outputs are regression values near 0 and 1, so its softmax is
nearly flat (right 84% of the time with a mean score of 0.18); class log-likelihoods are overconfident. Both are
fixed by one number per version: the logits are divided by a temperature T (Guo et al. 2017) that minimises the
negative log-likelihood of held-out samples' labels. Dividing by T > 0 never changes the argmax, so accuracy and
the gate's verdict are untouched. Where every held-out sample is right the NLL has no minimum (any sharpening
lowers it); the temperature then makes their mean top score (n + 1) / (n + 2), Laplace's rule of succession.

The temperature is part of the classifier (``IncrementalClassifier.logit_scale`` = 1 / T, a buffer saved with
the version) and of its ONNX graph (one Mul after the logits, in the head part), so the graph stays the single
source of the served score. Training never sees it: the trainer calls the network's own forward, and only
served logits (``Learner.logits``, the export) are scaled.

Expected calibration error (ECE): the sample-weighted mean, over 15 equal-width bins of the top score, of
|accuracy - mean score| in the bin (Naeini et al. 2015; Guo et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ECE_BINS = 15
LOG_T_RANGE = (-6.0, 6.0)  # the temperature is searched between e^-6 and e^6


def _masked(logits: Tensor, groups: Sequence[Tensor] | None, y: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's logits among the units it is scored among (``groups``: per row, its task's units; None: all) and
    its label's position there, as one padded (N, K) matrix with -inf padding."""
    if groups is None:
        return logits.double(), y
    width = max(len(g) for g in groups)
    out = torch.full((len(logits), width), float("-inf"), dtype=torch.float64)
    pos = torch.zeros(len(logits), dtype=torch.long)
    for i, g in enumerate(groups):
        out[i, : len(g)] = logits[i, g].double()
        pos[i] = int((g == y[i]).nonzero()[0])
    return out, pos


def nll(logits: Tensor, y: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` (N,) under softmax(logits / temperature), logits (N, U)."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, y, reduction="mean"))


def fit_temperature(
    logits: Tensor, y: Tensor, groups: Sequence[Tensor] | None = None, evidence: tuple[int, int] | None = None
) -> float:
    """The temperature T minimising the held-out NLL of ``y`` under softmax(logits / T): golden-section search on
    log T (the NLL is convex in 1 / T). No minimum inside ``LOG_T_RANGE`` (every sample right, or every one wrong): see
    below. ``groups``: per row, the units its softmax runs over (task-incremental). ``evidence``: (right, n) of
    other samples scored out of sample (a small new task's training samples, each by a fold that never saw it:
    ``service.jobs.training_cross_check``), counted with the held-out ones when every held-out sample is right. Only
    then: matching the mean top score to the accuracy held-out and out-of-fold samples measure together whenever the
    held-out ones are few lowered the ECE of some few-shot streams and raised others' (mnist-5k at 20 samples a class,
    tasks of 2: 0.044 -> 0.082), the folds, fitted on two thirds of a few samples, being less accurate than the
    version (mnist-5k at 10 a class, tasks of 5: 0.58 out of fold where the version served 0.70)."""
    z, pos = _masked(logits, groups, y)
    if len(z) == 0 or z.shape[1] < 2:
        return 1.0
    lo, hi = LOG_T_RANGE
    ratio = (5**0.5 - 1) / 2

    def f(log_t: float) -> float:
        return nll(z, pos, float(np.exp(log_t)))

    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):  # the bracket shrinks to 1e-12 of its width
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    log_t = (lo + hi) / 2
    if min(log_t - LOG_T_RANGE[0], LOG_T_RANGE[1] - log_t) < 1e-3:
        # the search ran to an end of its range: the held-out NLL has no minimum (every sample right, so any
        # sharpening lowers it, or every one wrong). Every one right: the scores are set to be right as often as
        # the held-out samples say a new one will be (Laplace's rule of succession, (n + 1) / (n + 2)), never 1
        # (banking77 one intent a task: 40 of 40 right on 2 intents left the ridge's flat scores, ECE 0.28-0.43)
        return _succession_temperature(z, pos, evidence)
    return float(np.exp(log_t))


def _succession_temperature(z: Tensor, pos: Tensor, evidence: tuple[int, int] | None = None) -> float:
    """Where every held-out sample is right: the temperature whose mean top score on them is (r + 1) / (n + 2), with
    n the held-out samples and r = n right, plus ``evidence``'s (right, n) when given (a first task of 2 digits
    classes with 10 held-out samples, all right, scored 11 / 12 where every test sample was right, ECE 0.107; its 40
    training samples scored out of fold take it to 51 / 52); 1 when some are wrong or it is out of range (bisection on
    log T: the mean top score falls as T grows)."""
    if not bool((z.argmax(1) == pos).all()):
        return 1.0
    more_right, more = evidence if evidence is not None else (0, 0)
    target = (len(z) + more_right + 1) / (len(z) + more + 2)

    def mean_top(log_t: float) -> float:
        return float(torch.softmax(z / float(np.exp(log_t)), 1).max(1).values.mean())

    lo, hi = LOG_T_RANGE
    if not mean_top(hi) <= target <= mean_top(lo):
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_top(mid) > target else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(scores: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of top scores ``scores`` (N,) in [0, 1] against whether each prediction was right (N,) bool."""
    scores, correct = np.asarray(scores, dtype=float), np.asarray(correct, dtype=float)
    if len(scores) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - scores[inside].mean())
    return float(total / len(scores))


def top_scores(logits: Tensor, y: Tensor, groups: Sequence[Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the softmax's top probability (N,), whether its argmax is the label (N,)), as served."""
    z, pos = _masked(logits, groups, y)
    probs = torch.softmax(z, 1)
    top, arg = probs.max(1)
    return top.numpy(), (arg == pos).numpy()


def calibration_report(
    logits: Tensor, y: Tensor, groups: Sequence[Tensor] | None = None, evidence: tuple[int, int] | None = None
) -> dict[str, float]:
    """Fit the temperature on all of (``logits``, ``y``) and say how well it calibrates: ``ece_before`` (the
    logits as they are), ``ece`` (out of sample: each half of the samples scored under the temperature fitted on
    the other half, so the figure is never the fit's own) and ``temperature``. ``evidence``: see ``fit_temperature``
    (reported as ``evidence_right`` and ``evidence_samples``)."""
    n = len(y)
    before = expected_calibration_error(*top_scores(logits, y, groups))
    t = fit_temperature(logits, y, groups, evidence)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    halves = [order[: n // 2], order[n // 2 :]]
    scores, right = [], []
    for fit, score in (halves, halves[::-1]):
        g = None if groups is None else [groups[i] for i in fit.tolist()]
        g2 = None if groups is None else [groups[i] for i in score.tolist()]
        t_half = fit_temperature(logits[fit], y[fit], g, evidence) if len(fit) else t
        s, r = top_scores(logits[score] / t_half, y[score], g2)
        scores.append(s)
        right.append(r)
    after = expected_calibration_error(np.concatenate(scores), np.concatenate(right)) if n > 1 else before
    out = {"temperature": round(t, 6), "ece_before": round(before, 4), "ece": round(after, 4), "samples": n}
    if evidence is not None:
        out |= {"evidence_right": evidence[0], "evidence_samples": evidence[1]}
    return out
