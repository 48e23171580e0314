"""The same migrations on SQLite and PostgreSQL: up, no drift from the models, down, and up again."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.db import Base, make_engine
from service.migrations import alembic_config, upgrade

ADMIN_URL = os.environ.get("ENGRAM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"engram_mig_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL reachable at {ADMIN_URL.split('@')[-1]} ({type(exc).__name__})")
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
