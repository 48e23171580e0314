"""The default strategy of a classifier's first job, chosen from how the candidates score on the job's own data.

Pure Python over each candidate's per-sample correctness, so it is tested without training anything; the
worker trains the candidates (``service.jobs.training_choice``). The candidates are the exemplar-free strategies that
can add classes (``model_core.strategy_specs.default_candidates``, read from the specs' metadata, so a new head
takes part without a change here); a candidate that refuses the classifier or its data is listed with why.

The winner is the best-scoring candidate, except that the measured default for the input
(``model_core.strategy_specs.default_strategy``, the rule this choice refines) is kept when the best one's lead
over it is within one standard error of their paired per-sample difference: a lead the samples cannot resolve
does not overturn a default measured on whole streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Trial:
    strategy: str
    correct: np.ndarray | None  # (n,) bool over the scoring samples (the same samples for every trial); None: refused
    seconds: float = 0.0
    steps: int | None = None  # optimiser steps it trained (0: closed form)
    capped: bool = False  # trained with fewer steps than the job would give it (gradient candidates, to stay cheap)
    error: str | None = None  # why it could not learn this job

    @property
    def score(self) -> float | None:
        return None if self.correct is None or len(self.correct) == 0 else round(float(np.mean(self.correct)), 4)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "score": self.score, "seconds": round(self.seconds, 3),
                "steps": self.steps, "capped": self.capped, "error": self.error}  # fmt: skip


def pick(trials: Sequence[Trial], prior: str) -> tuple[str | None, str]:
    """(the chosen strategy, why) among ``trials``; None when every candidate refused."""
    scored = [t for t in trials if t.score is not None and t.correct is not None]
    if not scored:
        return None, "every candidate refused this job"
    best = max(scored, key=lambda t: (t.score or 0.0, t.strategy == prior))
    default = next((t for t in scored if t.strategy == prior), None)
    if default is None or best is default:
        tied = [t.strategy for t in scored if t is not best and t.score == best.score]
        if tied:
            return best.strategy, (f"{best.strategy} tied with {', '.join(tied)} at {best.score:.4f}: the measured "
                                   "default for this input is kept")  # fmt: skip
        lead = "" if len(scored) == 1 else f" (next: {_runner_up(scored, best)})"
        return best.strategy, f"highest score {best.score:.4f}{lead}"
    assert best.correct is not None and default.correct is not None
    diff = best.correct.astype(float) - default.correct.astype(float)  # paired, per sample
    se = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else math.inf
    gain = float(diff.mean())
    if gain <= se:
        return default.strategy, (f"{best.strategy} scored {best.score:.4f}, {default.strategy} {default.score:.4f}: "
                                  f"a lead of {gain:.4f} within one standard error ({se:.4f}) of the paired "
                                  f"difference keeps the measured default for this input, {default.strategy}")  # fmt: skip
    return best.strategy, (f"highest score {best.score:.4f}, {gain:.4f} over the measured default "
                           f"{default.strategy} ({default.score:.4f}; one standard error {se:.4f})")  # fmt: skip


def _runner_up(scored: Sequence[Trial], best: Trial) -> str:
    rest = sorted((t for t in scored if t is not best), key=lambda t: -(t.score or 0.0))
    return f"{rest[0].strategy} {rest[0].score:.4f}"
