from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import torch

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.data import SplitBenchmark, split_digits

DIGIT_INPUT = InputSpec("image", 1, 8, 8)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Small models train faster on one thread, and tests stay deterministic across machines.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> SplitBenchmark:
    return split_digits()


def digit_spec(scenario: str = "class-incremental", backbone: str = "mlp") -> NetworkSpec:
    return NetworkSpec(DIGIT_INPUT, backbone=backbone, scenario=scenario)  # type: ignore[arg-type]


FAST = TrainConfig(iterations=30, batch_size=32, device="cpu")


PG_ADMIN_URL = os.environ.get("ENGRAM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def throwaway_pg(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test run, dropped afterwards; skips when none answers."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(
            f"no PostgreSQL reachable at {PG_ADMIN_URL.split('@')[-1]} ({type(exc).__name__}); these tests need one"
        )
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
