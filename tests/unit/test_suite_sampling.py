"""The gate's share of a large regression suite (service.jobs.suite.scored_rows): whole up to its budget, past it a
seeded sample that keeps every class, every task's minimum and the new task whole; the stored labels of a sampled
job's rows let the next job score its parent on any rows."""

from __future__ import annotations

import numpy as np

from service.jobs.suite import CLASS_MIN, TASK_MIN, scored_rows
from service.jobs.training import (
    GATE_SUITE_SAMPLES,
    SERVED,
    parent_scores,
    predictions,
    scored_suite,
    suite_summary,
    task_slices,
    with_served,
)
from tests.unit.test_job_costs import _two_tasks


def _suite(classes: int, per_class: int, per_task: int) -> tuple[np.ndarray, np.ndarray]:
    """(task, label) of a suite: ``per_class`` samples of each class, in tasks of ``per_task`` classes, in order."""
    label = np.repeat([f"c{i}" for i in range(classes)], per_class)
    task = np.repeat([f"t{i // per_task + 1}" for i in range(classes)], per_class)
    return task, label


def test_a_suite_within_the_budget_is_scored_whole() -> None:
    task, label = _suite(100, 200, 10)  # 100 classes, 200 held-out samples each: 20,000, the default budget
    assert len(label) == GATE_SUITE_SAMPLES
    assert scored_rows(task, label, "t10", GATE_SUITE_SAMPLES, 0) is None
    task, label = _suite(1000, 4, 100)
    assert scored_rows(task, label, "t10", 4000, 0) is None  # exactly at the budget
    assert scored_rows(task, label, "t10", 0, 0) is None  # 0: never sampled


def test_past_the_budget_every_class_keeps_its_share_the_new_task_all_and_the_seed_fixes_the_rows() -> None:
    task, label = _suite(1000, 20, 100)  # 20,000 samples, 1,000 classes
    rows = scored_rows(task, label, "t10", 5000, seed=3)
    assert rows is not None
    assert np.all(np.diff(rows) > 0) and rows.max() < len(label)  # sorted rows of the suite, each once
    kept = dict(zip(*np.unique(label[rows], return_counts=True), strict=True))
    assert set(kept) == set(label)  # every class is still re-checked
    new = {f"c{i}" for i in range(900, 1000)}
    assert all(kept[c] == 20 for c in new)  # the new task: every sample
    assert all(kept[c] == 5000 // 1000 for c in set(label) - new)  # the old: budget // classes each
    assert np.array_equal(rows, scored_rows(task, label, "t10", 5000, seed=3))  # reproducible
    other = scored_rows(task, label, "t10", 5000, seed=4)
    assert other is not None and len(other) == len(rows) and not np.array_equal(rows, other)
    # a budget too small for every class: each keeps CLASS_MIN (and its task TASK_MIN), never none
    rows = scored_rows(task, label, "t10", 100, seed=0)
    assert rows is not None
    kept = dict(zip(*np.unique(label[rows], return_counts=True), strict=True))
    assert set(kept) == set(label)
    assert min(kept.values()) == max(CLASS_MIN, -(-TASK_MIN // 100))


def test_a_task_of_few_classes_keeps_its_minimum_and_a_class_smaller_than_its_share_keeps_all() -> None:
    big_t, big_l = _suite(1000, 20, 100)
    task = np.concatenate([big_t, ["tiny"] * 600, ["tiny"] * 3, ["new"] * 50])
    label = np.concatenate([big_l, ["a"] * 600, ["b"] * 3, ["z"] * 50])
    rows = scored_rows(task, label, "new", 5000, seed=0)
    assert rows is not None
    kept = dict(zip(*np.unique(label[rows], return_counts=True), strict=True))
    assert kept["a"] == TASK_MIN // 2 and kept["b"] == 3 and kept["z"] == 50


def test_a_sampled_job_stores_labels_for_its_rows_only_and_the_next_parent_predicts_the_rest() -> None:
    learner, suite, tasks, _ = _two_tasks()
    units = len(learner.labels)
    rows = np.flatnonzero(np.arange(len(suite["x"])) % 3 != 1)  # a sample of the suite's rows
    part, _ = scored_suite(suite, None, rows)
    mine = {t: predictions(learner, x, y, t, units) for t, (x, y) in task_slices(part, ["t1"]).items()}
    only_t1 = {k: v[suite["task"] == "t1"] for k, v in suite.items()}
    at = rows[rows < len(only_t1["x"])]
    stored = with_served(only_t1, mine, at)[SERVED]
    assert np.all(stored[at] != "") and np.all(np.delete(stored, at) == "")  # the rows it scored, and only those
    whole = parent_scores(learner, suite, tasks)
    cached = parent_scores(learner, suite, tasks, stored)  # the "" rows predicted again, the rest read
    assert np.array_equal(whole.predicted["t1"], cached.predicted["t1"])
    part_served = scored_suite(suite, stored, rows)
    again = parent_scores(learner, part_served[0], tasks, part_served[1])
    assert np.array_equal(again.predicted["t1"], whole.predicted["t1"][rows[suite["task"][rows] == "t1"]])


def test_the_report_says_how_much_of_the_suite_was_scored() -> None:
    assert suite_summary(400, None, 20_000, 0) == {"samples": 400, "scored": 400, "sampled": False,
                                                   "budget": 20_000, "seed": None}  # fmt: skip
    assert suite_summary(30_000, np.arange(9000), 5000, 7) == {"samples": 30_000, "scored": 9000, "sampled": True,
                                                              "budget": 5000, "seed": 7}  # fmt: skip


def test_many_small_tasks_share_the_budget_rather_than_keeping_their_minimum_each() -> None:
    task, label = _suite(1000, 250, 1)  # 1,000 tasks of one class, 250 held-out samples each
    rows = scored_rows(task, label, "t1000", 20_000, seed=0)
    assert rows is not None
    kept = dict(zip(*np.unique(label[rows], return_counts=True), strict=True))
    assert set(kept) == set(label) and kept["c999"] == 250  # every class; the new task whole
    assert len(rows) <= 2 * 20_000 + 250  # bounded by the budget, not TASK_MIN x tasks (200,000)
