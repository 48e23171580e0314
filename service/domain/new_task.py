"""The gate's judgement of a job's new classes from the data: the new task's floor, and renamed classes.

Pure numpy, so it is tested without training anything; the worker supplies what it measured.

**The floor follows the task.** A fixed floor (0.7 until now) rejects a few-shot task of many classes that no
model can learn to 0.7 from its samples, and passes a broken one on an easy task. Unless a user set
``new_task_floor``, the floor is read from two figures of the job's own data:

- ``chance``: 1 over the classes the candidate chooses among for the new task's samples (every class it knows
  in class-incremental learning, the task's own in task-incremental learning); a first task of one class has no
  floor (rule ``one class``: every answer is that class, its accuracy says nothing);
- ``reference``: a nearest-class-mean classifier (``nearest_mean_accuracy``), the simplest model there is,
  fitted on the job's training samples (and, in class-incremental learning, the old classes' samples of the
  regression suite, so that it too chooses among every class) on the same inputs the candidate's head sees (the
  frozen backbone's features, or the raw input), scored on the new task's evaluation samples.

``floor = chance + max(NEAR_CHANCE * (1 - chance), REFERENCE_SHARE * (reference - chance))``: a candidate must
keep at least ``REFERENCE_SHARE`` of the reference's gain over chance (far under the reference is broken), and
be clearly off chance (``NEAR_CHANCE`` of the way from chance to 1) even where the reference is not (labels
that no model can learn from, such as shuffled ones). The gate judges the floor as it always has: an accuracy
whose 95% interval reaches the floor is not called below it, so a tiny evaluation set cannot reject a task.

**Renamed classes.** A new class made of an old class's samples under another name (cats sent again as
"kitty") is not confusion the data allow between distinct classes: the candidate cannot tell the two apart.
Within the pair, the share of the old class's samples it gives to the new one (``a``) and the share of the new
class's samples it gives to the old one (``b``) add to about 1 for two copies of one class (the candidate's
choice between them does not depend on which label a sample carries), and to about 0 for classes it separates;
``separation = 1 - a - b``. A pair is called renamed when its separation is under ``RENAMED_SEPARATION`` and
its 95% upper bound under ``RENAMED_UPPER``, most of both classes' samples land in the pair (``PAIR_MASS``), with at least
``PAIR_MIN_SAMPLES`` of each: hard but distinct classes (dog against cat photos) separate well above it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A candidate must keep this share of the reference's gain over chance (measured: docs/guides/defaults-and-gate.md)
REFERENCE_SHARE = 0.5
# ... and be this share of the way from chance to 1 even where the reference is not (labels shuffled)
NEAR_CHANCE = 0.25
# Used only when the gate is given neither the classes nor a reference (a caller with no data to judge by)
FIXED_FLOOR = 0.7

# A pair is one class under two names when its separation is under RENAMED_SEPARATION and its 95% upper bound under
# RENAMED_UPPER: two copies of one class separate 0 (8x8 digits, half the 3s sent again as "three": 0.06, 95% up
# to 0.44 on 27 samples), distinct classes near 1 (cifar10-mini: docs/guides/defaults-and-gate.md)
RENAMED_SEPARATION = 0.25
RENAMED_UPPER = 0.5
PAIR_MASS = 0.5  # share of each class's samples the candidate gives to the pair, for the pair to be judged
PAIR_MIN_SAMPLES = 5  # samples of each class in the pair, at the least


@dataclass(frozen=True)
class Floor:
    value: float
    source: dict[str, Any]  # where the value came from: the user's setting, or chance and the reference


@dataclass(frozen=True)
class CrossChecked:
    """The new task's samples, training and held-out, each scored by a candidate fitted without it: what the gate
    judges the new task's floor on when its held-out split is small (``service.jobs.training_cross_check``)."""

    correct: np.ndarray  # (n,) bool
    reference: float | None  # the nearest class mean's accuracy on the same folds
    method: str  # in words, for the report
    seconds: float = 0.0


def new_task_floor(setting: float | None, classes: int | None, reference: float | None) -> Floor:
    """The new task's floor: the user's ``setting`` when given, else from ``chance`` (1 / ``classes``) and the
    ``reference`` accuracy (see the module doc); the fixed floor only when neither is known."""
    if setting is not None:
        return Floor(float(setting), {"rule": "setting", "value": float(setting)})
    if not classes:
        return Floor(FIXED_FLOOR, {"rule": "fixed", "value": FIXED_FLOOR,
                                   "why": "the gate was given no classes or reference to derive a floor from"})  # fmt: skip
    if classes == 1:
        # A class-incremental classifier's first task of one class: the candidate chooses among one class, so every
        # sample is answered right and its accuracy says nothing; the classes learnt later are judged against it
        return Floor(0.0, {"rule": "one class", "classes": 1,
                           "why": "the candidate chooses among one class: nothing to judge its accuracy against"})  # fmt: skip
    chance = 1.0 / classes
    near = chance + NEAR_CHANCE * (1 - chance)
    by_reference = chance + REFERENCE_SHARE * max(0.0, reference - chance) if reference is not None else 0.0
    value = max(near, by_reference)
    source = {"rule": "data", "classes": classes, "chance": round(chance, 4),
              "reference": None if reference is None else round(reference, 4),
              "reference_model": "nearest class mean", "near_chance_floor": round(near, 4),
              "reference_floor": round(by_reference, 4) if reference is not None else None,
              "bound_by": "reference" if by_reference > near else "chance"}  # fmt: skip
    return Floor(round(value, 4), source)


def nearest_mean_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, batch: int = 1024
) -> float | None:
    """Accuracy on (test_x (M, D), test_y) of the nearest class mean fitted on (train_x (N, D), train_y); None when
    there is nothing to score. Euclidean distance, computed in batches (memory M x classes at most)."""
    if len(test_x) == 0 or len(train_x) == 0:
        return None
    classes, inverse = np.unique(train_y.astype(str), return_inverse=True)
    x = train_x.reshape(len(train_x), -1).astype(np.float64)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / np.bincount(inverse, minlength=len(classes))[:, None]  # (K, D)
    sq = (means**2).sum(1)
    t = test_x.reshape(len(test_x), -1).astype(np.float64)
    right = 0
    for i in range(0, len(t), batch):
        d = sq[None, :] - 2 * t[i : i + batch] @ means.T  # (B, K): |t - m|^2 less |t|^2, the same for every class
        right += int(np.sum(classes[d.argmin(1)] == test_y[i : i + batch].astype(str)))
    return right / len(t)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(classes, counts (K, K)): counts[i, j] = samples of class i predicted as j, in one pass (O(N + K^2))."""
    classes, inv = np.unique(np.concatenate([labels.astype(str), predicted.astype(str)]), return_inverse=True)
    k = len(classes)
    flat = np.bincount(inv[: len(labels)] * k + inv[len(labels) :], minlength=k * k)
    return [str(c) for c in classes], flat.reshape(k, k)


@dataclass(frozen=True)
class NewClassCounts:
    """The parts of the (K, K) confusion counts the gate reads about a job's new classes: its diagonal, the columns
    and the rows of the new classes, and each class's samples. O(N + K x new) in time and memory, where the whole
    matrix is K^2 (10,000 classes: 800 MB) though the gate never reads the rest of it."""

    classes: list[str]
    index: dict[str, int]
    totals: np.ndarray  # (K,) samples of each class
    diagonal: np.ndarray  # (K,) samples of each class predicted as itself
    new_at: dict[int, int]  # class index of a new class -> its position among ``new``'s present classes
    to_new: np.ndarray  # (K, M) samples of class i predicted as the new class at position j
    from_new: np.ndarray  # (M, K) samples of the new class at position j predicted as class i

    @classmethod
    def measure(cls, labels: np.ndarray, predicted: np.ndarray, new: Sequence[str]) -> NewClassCounts:
        names, inv = np.unique(np.concatenate([labels.astype(str), predicted.astype(str)]), return_inverse=True)
        k, n = len(names), len(labels)
        true, pred = inv[:n], inv[n:]
        classes = [str(c) for c in names]
        index = {c: i for i, c in enumerate(classes)}
        present = list(dict.fromkeys(index[c] for c in new if c in index))
        new_at = {c: j for j, c in enumerate(present)}
        m = len(present)
        col = np.full(k, -1)
        col[present] = np.arange(m)
        to, fro = col[pred] >= 0, col[true] >= 0
        to_new = np.bincount(true[to] * m + col[pred[to]], minlength=k * m).reshape(k, m)
        from_new = np.bincount(col[true[fro]] * k + pred[fro], minlength=m * k).reshape(m, k)
        totals = np.bincount(true, minlength=k)
        diagonal = np.bincount(true[true == pred], minlength=k)
        return cls(classes, index, totals, diagonal, new_at, to_new, from_new)

    def count(self, t: int, p: int) -> int:
        """Samples of class index ``t`` predicted as ``p``, where either is a new class or they are the same."""
        if t == p:
            return int(self.diagonal[t])
        if p in self.new_at:
            return int(self.to_new[t, self.new_at[p]])
        if t in self.new_at:
            return int(self.from_new[self.new_at[t], p])
        raise KeyError(f"no counts kept for {self.classes[t]!r} predicted as {self.classes[p]!r}")


def renamed_pairs(labels: np.ndarray, predicted: np.ndarray, new: Sequence[str]) -> list[dict[str, Any]]:
    """(old, new) class pairs that the candidate cannot tell apart, as two copies of one class would be (see the
    module doc), worst first; ``labels``/``predicted``: every task's evaluation samples and the candidate's labels."""
    counts = NewClassCounts.measure(labels, predicted, new)
    classes, index, totals = counts.classes, counts.index, counts.totals
    news = [index[n] for n in new if n in index and totals[index[n]] > 0]
    newset = set(new)
    olds = [i for i in range(len(classes)) if totals[i] > 0 and classes[i] not in newset]
    out = []
    old_rows = np.array(olds, dtype=int)
    for n in news:
        j = counts.new_at[n]
        # the old classes the candidate mixes with n at all (the others: nothing to judge), in order
        mixed = old_rows[(counts.to_new[old_rows, j] + counts.from_new[j, old_rows]) > 0].tolist()
        for o in mixed:
            o_n, n_o = counts.to_new[o, j], counts.from_new[j, o]  # old taken for new, new taken for old
            m_o, m_n = counts.diagonal[o] + o_n, counts.diagonal[n] + n_o  # samples landing in the pair
            if min(m_o, m_n) < PAIR_MIN_SAMPLES or m_o < PAIR_MASS * totals[o] or m_n < PAIR_MASS * totals[n]:
                continue
            a, b = o_n / m_o, n_o / m_n
            separation = 1.0 - a - b
            upper = separation + 1.96 * math.sqrt(a * (1 - a) / m_o + b * (1 - b) / m_n)
            if separation < RENAMED_SEPARATION and upper < RENAMED_UPPER:
                out.append({"old": classes[o], "new": classes[n], "old_as_new": round(float(o_n / totals[o]), 4),
                            "new_as_old": round(float(n_o / totals[n]), 4),
                            "separation": round(separation, 4), "separation_upper95": round(upper, 4)})  # fmt: skip
    out.sort(key=lambda r: r["separation_upper95"])
    return out


def renamed_failure(pair: Mapping[str, Any]) -> str:
    """The gate's refusal of a renamed pair: the pair, the evidence, and what to do."""
    old, new = pair["old"], pair["new"]
    return (f"new class {new!r} looks like old class {old!r} under another name: the candidate cannot tell them "
            f"apart ({old!r} taken for {new!r} {pair['old_as_new']:.2f}, the reverse {pair['new_as_old']:.2f}; "
            f"within the pair they separate {pair['separation']:.2f}, 95% up to {pair['separation_upper95']:.2f}, "
            f"where two copies of one class separate 0 and distinct classes near 1). Send these samples as "
            f"{old!r} (merge the labels), or send samples that separate {new!r} from {old!r}; an admin who knows "
            "them to be different may promote this version with force and a reason")  # fmt: skip
