"""The promotion gate: compare a candidate with its parent on every task's evaluation set.

Pure Python over per-sample correctness, so it is tested without training anything.

- An old task fails when its accuracy drops by more than its tolerance. The default tolerance is
  max(0.08, the 95% half-width of the task's accuracy at its evaluation-set size): a drop smaller than
  the evaluation set can resolve is not called a regression. Each drop is reported with a paired 95%
  interval (per-sample differences between parent and candidate).
- The new task must reach ``new_task_floor``.
- The ONNX export must load and match torch (max abs difference within 1e-4).

Given each task's labels, the report also has a row per class (before, after, the same size-aware
tolerance) and names the forgotten classes: an old class whose accuracy fell beyond its tolerance. It
says who lost each one (generator or classifier, from the strategy's train-time replay figures) and one
next step (``service.gate_advice``). These explain; the verdict stays per task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_core.strategy_specs import SPECS, suggestion_for_new_classes
from service.gate_advice import JobFacts, has_generator, lost_by, next_step

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


def replay_figures(diagnostics: Mapping[str, Any]) -> dict[str, float]:
    """{class: accuracy of the parent on the generator's replay of it}; absent or malformed -> {}."""
    raw = diagnostics.get("replay_accuracy")
    if not isinstance(raw, Mapping):
        return {}
    ok = {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {k: round(v, 4) for k, v in ok.items() if math.isfinite(v)}


def class_rows(
    cfg: GateConfig,
    new_task: str,
    tasks: list[tuple[str, np.ndarray | None, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    replayed: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One row per (task, class): accuracy before and after; an old class is ``forgotten`` when its drop
    exceeds the tolerance its own sample count allows (the same rule as a task's)."""
    rows = []
    for name, before_c, after_c in tasks:
        lab = labels.get(name)
        if lab is None or len(lab) != len(after_c):
            continue
        lab = lab.astype(str)
        for c in sorted(set(lab.tolist())):
            keep = lab == c  # (n,) bool
            n, after = int(keep.sum()), float(np.mean(after_c[keep]))
            row: dict[str, Any] = {"class": c, "task": name, "n": n, "after": round(after, 4), "before": None,
                                   "forgotten": False}  # fmt: skip
            if before_c is not None and name != new_task:
                before = float(np.mean(before_c[keep]))
                tol = task_tolerance(cfg, before, n)
                row.update(before=round(before, 4), drop=round(before - after, 4), tolerance=round(tol, 4),
                           forgotten=before - after > tol, replay_accuracy=replayed.get(c))  # fmt: skip
            rows.append(row)
    return rows


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
    *,
    labels: Mapping[str, np.ndarray] | None = None,
    diagnostics: Mapping[str, Any] | None = None,
    facts: JobFacts | None = None,
) -> dict[str, Any]:
    """``tasks``: (name, parent correct (n,) bool or None for a task the parent lacks, candidate correct).
    ``labels``: each task's (n,) labels, aligned with its correct arrays (per-class rows need them);
    ``diagnostics``: what the strategy measured while training (``LearnResult.diagnostics``);
    ``facts``: the job's parameters and network, from which the next step is chosen."""
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
    cannot_add = scenario == "class-incremental" and bool(added_classes) and not spec.adds_classes
    if old_failed and cannot_add:
        report["explanation"] = (
            f"'{strategy}' cannot add classes to a class-incremental classifier: it protects the old weights, "
            "but nothing in its training teaches the network to tell the old classes from the new ones, so "
            "predictions collapse onto the newest classes. Use "
            f"{suggestion_for_new_classes(retention)} to add classes."
        )
        report["recommended_strategy"] = "generative_replay"
    new_failed = any(not r["passed"] for r in rows if r.get("before") is None)
    report.update(_per_class(cfg, scenario, strategy, retention, cannot_add, new_task, tasks, new_failed,
                             labels or {}, diagnostics or {}, facts or JobFacts()))  # fmt: skip
    return report


def _per_class(
    cfg: GateConfig,
    scenario: str,
    strategy: str,
    retention: str,
    cannot_add: bool,
    new_task: str,
    tasks: list[tuple[str, np.ndarray | None, np.ndarray]],
    new_failed: bool,
    labels: Mapping[str, np.ndarray],
    diagnostics: Mapping[str, Any],
    facts: JobFacts,
) -> dict[str, Any]:
    """The report's per-class part: ``classes`` rows, ``forgotten`` labels (each forgotten row says who
    ``lost_by``), and ``next_step`` (a sentence) with ``next_step_request`` (learn-request fields to change)."""
    rows = class_rows(cfg, new_task, tasks, labels, replay_figures(diagnostics))
    generator = has_generator(SPECS[strategy])
    forgotten = [r for r in rows if r["forgotten"]]
    old = [r for r in rows if r["before"] is not None]
    for r in forgotten:
        # the classes the parent chose among when it judged the replay: every old class, or the task's own
        rivals = [o for o in old if scenario == "class-incremental" or o["task"] == r["task"]]
        r["lost_by"] = lost_by(r, generator, chance=1 / len(rivals))
    step = next_step(strategy, retention, cannot_add, forgotten, new_failed, facts, diagnostics)
    return {
        "classes": rows,
        "forgotten": list(dict.fromkeys(r["class"] for r in forgotten)),
        "next_step": None if step is None else step.text,
        "next_step_request": None if step is None else step.request,
    }
