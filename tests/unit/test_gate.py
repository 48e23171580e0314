from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.gate import GateConfig, evaluate


def correct(n_right: int, n: int) -> np.ndarray:
    """A per-sample correctness vector with ``n_right`` True values first."""
    return np.arange(n) < n_right


def run(
    tasks: list[tuple[str, np.ndarray | None, np.ndarray]],
    cfg: GateConfig | None = None,
    strategy: str = "replay",
    scenario: str = "class-incremental",
    retention: str = "keep",
    added: list[str] | None = None,
    onnx_error: str | None = None,
) -> dict[str, Any]:
    return evaluate(cfg or GateConfig(), scenario, strategy, retention, "new", added or [], tasks, 0.0, onnx_error)


NEW_OK = ("new", None, correct(95, 100))


def test_old_task_dropping_beyond_tolerance_fails_and_is_named() -> None:
    report = run([("old", correct(95, 100), correct(60, 100)), NEW_OK])
    assert report["passed"] is False
    assert len(report["failures"]) == 1
    msg = report["failures"][0]
    assert "'old'" in msg and "0.950" in msg and "0.600" in msg
    row = report["tasks"][0]
    assert row["passed"] is False and row["before"] == 0.95 and row["after"] == 0.6 and row["drop"] == 0.35


def test_drop_within_tolerance_passes() -> None:
    report = run([("old", correct(95, 100), correct(90, 100)), NEW_OK])
    assert report["passed"] is True and report["failures"] == []
    assert report["tasks"][0]["passed"] is True
    assert report["bwt"] == pytest.approx(-0.05)


def test_default_tolerance_grows_for_small_evaluation_sets() -> None:
    # Accuracy 0.5 -> 0.3 on both: the Agresti-Coull half-width at n=10 (0.26) hides the drop, at
    # n=1000 it does not.
    small = run([("old", correct(5, 10), correct(3, 10)), NEW_OK])
    large = run([("old", correct(500, 1000), correct(300, 1000)), NEW_OK])
    small_tol, large_tol = small["tasks"][0]["tolerance"], large["tasks"][0]["tolerance"]
    assert small_tol == pytest.approx(1.96 * (0.25 / 14) ** 0.5, abs=1e-4)  # p~ = (5+2)/(10+4)
    assert large_tol == pytest.approx(0.08)  # the floor: the half-width at n=1000 is only 0.031
    assert small_tol > large_tol
    assert small["passed"] is True and large["passed"] is False


def test_a_perfect_parent_still_gets_a_size_aware_tolerance() -> None:
    # 10/10 before, 9/10 after: one sample's difference on a tiny set is not called a regression,
    # while the same 10% drop on 1000 samples is.
    assert run([("old", correct(10, 10), correct(9, 10)), NEW_OK])["passed"] is True
    assert run([("old", correct(1000, 1000), correct(900, 1000)), NEW_OK])["passed"] is False


def test_explicit_tolerance_overrides_the_default() -> None:
    tasks = [("old", correct(5, 10), correct(3, 10)), NEW_OK]
    report = run(tasks, GateConfig(tolerance=0.1))
    assert report["tasks"][0]["tolerance"] == 0.1 and report["passed"] is False
    assert run(tasks, GateConfig(tolerance=0.25))["passed"] is True


def test_new_task_below_floor_fails() -> None:
    report = run([("new", None, correct(60, 100))], GateConfig(new_task_floor=0.7))
    assert report["passed"] is False
    assert "new task 'new'" in report["failures"][0] and "0.600" in report["failures"][0]
    assert run([("new", None, correct(70, 100))], GateConfig(new_task_floor=0.7))["passed"] is True


def test_onnx_error_fails_the_gate() -> None:
    report = run([NEW_OK], onnx_error="outputs differ by 0.3")
    assert report["passed"] is False
    assert report["onnx"]["passed"] is False and report["onnx"]["error"] == "outputs differ by 0.3"
    assert any("ONNX" in f and "outputs differ by 0.3" in f for f in report["failures"])


FORGOTTEN = [("old", correct(95, 100), correct(10, 100)), NEW_OK]


def test_explanation_recommends_generative_replay_for_ewc_adding_classes() -> None:
    report = run(FORGOTTEN, strategy="ewc", added=["7", "8"])
    assert report["passed"] is False
    assert "'ewc'" in report["explanation"] and "generative_replay" in report["explanation"]
    assert report["recommended_strategy"] == "generative_replay"


@pytest.mark.parametrize(
    ("strategy", "scenario", "added"),
    [
        ("generative_replay", "class-incremental", ["7"]),
        ("ewc", "task-incremental", ["7"]),
        ("ewc", "class-incremental", []),
    ],
)
def test_no_explanation_where_the_strategy_is_not_the_cause(strategy: str, scenario: str, added: list[str]) -> None:
    report = run(FORGOTTEN, strategy=strategy, scenario=scenario, added=added)
    assert report["passed"] is False
    assert report["explanation"] is None and "recommended_strategy" not in report


def test_discard_retention_suggests_only_generative_replay() -> None:
    kept = run(FORGOTTEN, strategy="lwf", added=["7"], retention="keep")["explanation"]
    discarded = run(FORGOTTEN, strategy="lwf", added=["7"], retention="discard")["explanation"]
    assert "replay (keeps" in kept
    assert "generative_replay" in discarded and "replay (keeps" not in discarded


def test_drop_ci95_brackets_the_drop() -> None:
    before = correct(80, 100)
    after = np.roll(correct(70, 100), 5)  # mixed per-sample differences, not a constant shift
    row = run([("old", before, after), NEW_OK])["tasks"][0]
    lo, hi = row["drop_ci95"]
    assert lo < row["drop"] < hi
    assert row["drop"] == pytest.approx(0.1)


def test_merged_ignores_none_overrides() -> None:
    base = GateConfig(tolerance=0.05, new_task_floor=0.9, holdout=0.3)
    merged = base.merged({"tolerance": None, "new_task_floor": 0.5, "manual_approval": None})
    assert merged == GateConfig(tolerance=0.05, new_task_floor=0.5, holdout=0.3)
    assert base.merged(None) == base
