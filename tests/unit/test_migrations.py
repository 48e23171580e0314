from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.application.services import Invalid, stratified_holdout
from service.persistence.migrations import upgrade
from service.persistence.models import Base, Classifier, make_engine, make_sessionmaker

TABLES = {"classifiers", "versions", "jobs", "audit", "captured_inputs", "lifecycle_events"}


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'engram.db'}"


def inspect(url: str) -> tuple[str | None, set[str], list[Any]]:
    """(current revision, table names, differences between the database and the models)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn)
            return (
                ctx.get_current_revision(),
                set(sa.inspect(conn).get_table_names()),
                compare_metadata(ctx, Base.metadata),
            )
    finally:
        engine.dispose()


def test_upgrade_creates_the_schema_the_models_describe(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    upgrade(url)
    revision, tables, diff = inspect(url)
    assert revision is not None
    assert tables == TABLES | {"alembic_version"}
    assert diff == []


def add_classifier(url: str, name: str) -> None:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            s.add(Classifier(name=name, network={"input": {}}, gate={"holdout": 0.2}))
            s.commit()
    finally:
        engine.dispose()


def classifier_names(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            return list(s.scalars(sa.select(Classifier.name)))
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    upgrade(url)
    first = inspect(url)
    add_classifier(url, "digits")
    upgrade(url)
    assert inspect(url) == first
    assert classifier_names(url) == ["digits"]  # data survives the second upgrade


def test_migrated_database_accepts_rows_through_the_models(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    upgrade(url)
    add_classifier(url, "a")
    add_classifier(url, "b")
    assert sorted(classifier_names(url)) == ["a", "b"]
    with pytest.raises(sa.exc.IntegrityError):
        add_classifier(url, "a")  # the unique name constraint came from the migration


def test_compare_metadata_would_notice_a_missing_table(tmp_path: Path) -> None:
    # Guards the first test against passing vacuously: an empty database differs from the models.
    url = sqlite_url(tmp_path)
    engine = make_engine(url)
    engine.dispose()
    _, _, diff = inspect(url)
    assert {d[1].name for d in diff if d[0] == "add_table"} == TABLES


@pytest.mark.parametrize("share", [0.01, 0.2, 0.5, 0.99])
def test_stratified_holdout_takes_some_of_every_class_but_never_all(share: float) -> None:
    labels = np.array(["a"] * 2 + ["b"] * 5 + ["c"] * 40)
    mask = stratified_holdout(labels, share, seed=3)
    assert mask.dtype == bool and mask.shape == labels.shape
    held, total = Counter(labels[mask].tolist()), Counter(labels.tolist())
    for label, count in total.items():
        assert 1 <= held[label] <= count - 1


def test_stratified_holdout_takes_about_share_of_a_large_class() -> None:
    labels = np.array(["x"] * 100 + ["y"] * 50)
    mask = stratified_holdout(labels, 0.2)
    assert Counter(labels[mask].tolist()) == {"x": 20, "y": 10}


def test_stratified_holdout_is_reproducible_by_seed() -> None:
    labels = np.array(["a", "b"] * 50)
    assert np.array_equal(stratified_holdout(labels, 0.3, seed=1), stratified_holdout(labels, 0.3, seed=1))
    assert not np.array_equal(stratified_holdout(labels, 0.3, seed=1), stratified_holdout(labels, 0.3, seed=2))


def test_stratified_holdout_refuses_a_class_with_one_sample() -> None:
    with pytest.raises(Invalid, match="'lonely'"):
        stratified_holdout(np.array(["a", "a", "a", "lonely"]), 0.2)
