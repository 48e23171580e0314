"""The retention policy's plan: which versions a prune keeps, and the reason it gives for each."""

from __future__ import annotations

import datetime as dt

import pytest

from service.domain.retention import DEFAULT, PointerMove, RetentionPolicy, VersionFacts, plan

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def days_ago(d: float) -> dt.datetime:
    return NOW - dt.timedelta(days=d)


def chain(n: int, age: float = 100) -> list[VersionFacts]:
    """v1..vn, each the parent of the next, all retired, ``age`` days old."""
    return [VersionFacts(i, "retired", i - 1 if i > 1 else None, days_ago(age)) for i in range(1, n + 1)]


def test_the_active_version_and_its_nearest_ancestors_are_kept_the_rest_pruned() -> None:
    versions = chain(6)
    decisions = plan(versions, 6, [], [], RetentionPolicy(keep_ancestors=2, keep_days=30), NOW)
    assert decisions[6] == "active"
    assert decisions[5] is not None and decisions[5].startswith("ancestor 1")
    assert decisions[4] is not None and decisions[4].startswith("ancestor 2")
    assert [n for n, why in decisions.items() if why is None] == [1, 2, 3]


def test_recent_pointer_moves_keep_both_ends_and_recent_versions_stay() -> None:
    versions = [*chain(4), VersionFacts(5, "rejected", 4, days_ago(2)), VersionFacts(6, "rejected", 4, days_ago(40))]
    moves = [PointerMove(2, 4, days_ago(3)), PointerMove(1, 2, days_ago(90))]  # v2 served until 3 days ago
    decisions = plan(versions, 4, moves, [], RetentionPolicy(keep_ancestors=0, keep_days=30), NOW)
    assert decisions[2] == "active within the last 30 days"
    assert decisions[5] == "created within the last 30 days"
    assert decisions[1] is None and decisions[3] is None and decisions[6] is None


def test_a_live_jobs_parent_is_kept_and_pruned_versions_are_left_out() -> None:
    versions = [*chain(3), VersionFacts(4, "pruned", 3, days_ago(100))]
    decisions = plan(versions, 3, [], [1], RetentionPolicy(keep_ancestors=0, keep_days=0), NOW)
    assert decisions == {1: "a live job trains from it", 2: None, 3: "active"}


def test_no_active_version_keeps_only_what_is_recent() -> None:
    versions = [VersionFacts(1, "rejected", None, days_ago(31)), VersionFacts(2, "rejected", None, days_ago(1))]
    assert plan(versions, None, [], [], DEFAULT, NOW) == {1: None, 2: "created within the last 30 days"}


def test_the_policy_refuses_what_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="keep_ancestors"):
        RetentionPolicy(keep_ancestors=-1)
    with pytest.raises(ValueError, match="keep_days"):
        RetentionPolicy(keep_days=float("nan"))
    with pytest.raises(ValueError, match="unknown retention"):
        RetentionPolicy.from_dict({"keep_versions": 3})
    assert RetentionPolicy.from_dict({"keep_days": 7}, RetentionPolicy(5, 1)) == RetentionPolicy(5, 7)
    assert RetentionPolicy.from_dict(None) == DEFAULT
