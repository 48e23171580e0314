"""The promotion gate: compare a candidate with its parent on every task's evaluation set.

Pure Python over per-sample correctness, so it is tested without training anything.

- An old task fails when its accuracy drops by more than its tolerance. The default tolerance is
  max(0.08, the 95% half-width of the task's accuracy at its evaluation-set size): a drop smaller than
  the evaluation set can resolve is not called a regression. Each drop is reported with a paired 95%
  interval (per-sample differences between parent and candidate).
- The new task must reach ``new_task_floor``.
- The ONNX export must load and match torch (max abs difference within 1e-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_core.strategy_specs import SPECS, suggestion_for_new_classes

DEFAULT_MIN_TOLERANCE = 0.08


@dataclass(frozen=True)
class GateConfig:
    tolerance: float | None = None  # None: size-aware default per task (see module doc)
    new_task_floor: float = 0.7
    manual_approval: bool = False
    holdout: float = 0.2  # share of each class carved out as evaluation set when none is given

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateConfig:
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})

    def merged(self, overrides: dict[str, Any] | None) -> GateConfig:
        return GateConfig.from_dict({**self.__dict__, **{k: v for k, v in (overrides or {}).items() if v is not None}})


def halfwidth(p: float, n: int) -> float:
    """95% half-width of an accuracy measured on n samples (Agresti-Coull: never 0, even at p = 1)."""
    n_adj = max(n, 0) + 4
    p_adj = (p * n + 2) / n_adj
    return 1.96 * math.sqrt(p_adj * (1 - p_adj) / n_adj)


def task_tolerance(cfg: GateConfig, before: float, n: int) -> float:
    if cfg.tolerance is not None:
        return cfg.tolerance
    return max(DEFAULT_MIN_TOLERANCE, halfwidth(before, n))


def evaluate(
    cfg: GateConfig,
    scenario: str,
    strategy: str,
    retention: str,
    new_task: str,
    added_classes: list[str],
    tasks: list[tuple[str, np.ndarray | None, np.ndarray]],
    onnx_diff: float | None,
    onnx_error: str | None,
) -> dict[str, Any]:
    """``tasks``: (name, parent correct (n,) bool or None for a task the parent lacks, candidate correct)."""
    rows, failures = [], []
    for name, before_c, after_c in tasks:
        n = len(after_c)
        after = float(np.mean(after_c)) if n else 0.0
        row: dict[str, Any] = {"task": name, "n": n, "after": round(after, 4), "new": name == new_task}
        if before_c is not None and name != new_task:
            before = float(np.mean(before_c))
            diff = before_c.astype(float) - after_c.astype(float)  # paired, per sample
            drop = before - after
            hw = 1.96 * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else 1.0
            tol = task_tolerance(cfg, before, n)
            ok = drop <= tol
            lo, hi = max(-1.0, drop - hw), min(1.0, drop + hw)
            row.update(before=round(before, 4), drop=round(drop, 4), drop_ci95=[round(lo, 4), round(hi, 4)],
                       tolerance=round(tol, 4), passed=ok)  # fmt: skip
            if not ok:
                failures.append(f"task {name!r}: accuracy fell from {before:.3f} to {after:.3f} "
                                f"(drop {drop:.3f}, 95% CI {lo:.3f}..{hi:.3f}; tolerance {tol:.3f})")  # fmt: skip
        else:
            ok = after >= cfg.new_task_floor
            row.update(before=None, floor=cfg.new_task_floor, passed=ok)
            if not ok:
                failures.append(f"new task {name!r}: accuracy {after:.3f} is below the floor {cfg.new_task_floor:.3f}")
        rows.append(row)
    onnx_ok = onnx_error is None
    if not onnx_ok:
        failures.append(f"ONNX export: {onnx_error}")
    old = [r for r in rows if r.get("before") is not None]
    report: dict[str, Any] = {
        "passed": not failures,
        "tasks": rows,
        "accuracy_row": [r["after"] for r in rows],
        "average_accuracy": round(float(np.mean([r["after"] for r in rows])), 4) if rows else None,
        "bwt": round(float(np.mean([r["after"] - r["before"] for r in old])), 4) if old else None,
        "onnx": {"passed": onnx_ok, "max_abs_diff": onnx_diff, "error": onnx_error},
        "failures": failures,
        "explanation": None,
    }
    spec = SPECS[strategy]
    old_failed = any(not r["passed"] for r in old)
    if old_failed and scenario == "class-incremental" and added_classes and not spec.adds_classes:
        report["explanation"] = (
            f"'{strategy}' cannot add classes to a class-incremental classifier: it protects the old weights, "
            "but nothing in its training teaches the network to tell the old classes from the new ones, so "
            "predictions collapse onto the newest classes. Use "
            f"{suggestion_for_new_classes(retention)} to add classes."
        )
        report["recommended_strategy"] = "generative_replay"
    return report
