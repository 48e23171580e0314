"""The same migrations on SQLite and PostgreSQL: up, no drift from the models, down, and up again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.persistence.migrations import alembic_config, upgrade
from service.persistence.models import Base, make_engine
from tests.conftest import throwaway_pg


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with throwaway_pg("engram_mig") as pg:
        yield pg


def drift(url: str) -> list[object]:
    engine = make_engine(url)
    with engine.connect() as c:
        opts = {"include_name": lambda n, kind, _: not (kind == "table" and str(n).startswith("procrastinate"))}
        diff = compare_metadata(MigrationContext.configure(c, opts=opts), Base.metadata)
    engine.dispose()
    return list(diff)


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_migrations_match_the_models_and_go_down_and_up(url: str) -> None:
    upgrade(url)
    upgrade(url)  # a second run is a no-op
    assert drift(url) == []
    have = tables(url)
    assert {"classifiers", "versions", "jobs", "audit"} <= have
    assert ("procrastinate_jobs" in have) == url.startswith("postgresql")
    command.downgrade(alembic_config(url), "base")
    assert tables(url) <= {"alembic_version"}
    upgrade(url)
    assert drift(url) == []
