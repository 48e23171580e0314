"""Continual-learning metrics over an accuracy matrix R, where R[i][j] is the accuracy on task j's test
set after learning experience i (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ContinualMetrics:
    matrix: list[list[float]]  # T x T; entries for tasks not yet learned are NaN
    average_accuracy: float  # mean of the last row
    bwt: float  # backward transfer: mean of R[T-1][j] - R[j][j] over j < T-1 (negative = forgetting)
    forgetting: list[float]  # per task j < T-1: max_{l < T-1} R[l][j] - R[T-1][j]


def average_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    last = np.asarray(matrix[-1], dtype=float)
    return float(np.nanmean(last))


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    r = np.asarray(matrix, dtype=float)
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([r[t - 1, j] - r[j, j] for j in range(t - 1)]))


def forgetting(matrix: Sequence[Sequence[float]]) -> list[float]:
    r = np.asarray(matrix, dtype=float)
    t = r.shape[0]
    return [float(np.nanmax(r[: t - 1, j]) - r[t - 1, j]) for j in range(t - 1)]


def summarise(matrix: Sequence[Sequence[float]]) -> ContinualMetrics:
    rows = [list(map(float, row)) for row in matrix]
    if not rows or any(len(row) != len(rows) for row in rows):
        raise ValueError("the accuracy matrix must be square and non-empty")
    return ContinualMetrics(rows, average_accuracy(rows), backward_transfer(rows), forgetting(rows))
