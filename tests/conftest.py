from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.data import SplitBenchmark, split_digits

DIGIT_INPUT = InputSpec("image", 1, 8, 8)


# The suite runs in 2 processes, each taking whole files (.ci/run: -n 2 --dist loadfile), handed out in collection
# order as a process runs low. A long file started last leaves the other process idle until it ends, so the
# longest files are collected first and the many short ones fill in behind them. Seconds a file takes on a quiet
# 2-core machine in the parallel run (approximate; only the order matters); files not named here follow, as found.
LONG_FILES = {
    "tests/e2e/test_real_streams.py": 200,
    "tests/e2e/test_scaleout.py": 150,
    "tests/e2e/test_storage_lifecycle.py": 124,
    "tests/integration/test_quality.py": 98,
    "tests/unit/test_pretrained.py": 88,
    "tests/integration/test_readme_commands.py": 87,
    "tests/e2e/test_text.py": 84,
    "tests/e2e/test_promotion_crash.py": 80,
    "tests/e2e/test_shared_backbone.py": 70,
    "tests/e2e/test_photos.py": 60,
    "tests/e2e/test_learning_28px.py": 57,
}


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's own default hands out files with the most tests first, which puts the long single-test
    # files last: keep the order below (pytest_collection_modifyitems) instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a stable sort: a file's tests keep their order
    items.sort(key=lambda item: -LONG_FILES.get(item.nodeid.split("::")[0], 0))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One cache of exported backbone graphs (ENGRAM_GRAPH_CACHE_DIR) for every server and worker this run starts,
    shared by the parallel test processes: a backbone is exported once per run, as once per host in a deployment,
    rather than once per test's data folder (19-20 s each on 2 cores: the first job's load stage in
    ``python -m benchmarks.learn_speed --photos ../shared/data/cifar10-mini``). The first job on it still exports it."""
    if "ENGRAM_GRAPH_CACHE_DIR" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # pytest-xdist: popen-gwN's parent
        os.environ["ENGRAM_GRAPH_CACHE_DIR"] = str(shared / "graph-cache")


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


@dataclass
class PgCluster:
    """A PostgreSQL server of the test's own (``initdb`` + ``pg_ctl``) that the test may stop and start."""

    data: Path
    port: int
    run_as: list[str]  # prefix that runs a command as the cluster's owner (PostgreSQL refuses root)
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        cmd = [*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        self.ctl("-l", str(self.data / "server.log"), "-o", f"-p {self.port} -k {self.data} -h 127.0.0.1", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth), removed afterwards. Skips, saying
    why, when the server binaries are absent (Debian: apt-get install postgresql)."""
    import pwd
    import socket
    import tempfile

    binary = _pg_bin()
    if binary is None or not (binary / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine; apt-get install postgresql")
    run_as: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="engram-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the packages' postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(data)
            pytest.skip("running as root and no 'postgres' user to own a throwaway PostgreSQL cluster")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cluster = PgCluster(data / "db", port, run_as, binary)
    try:
        subprocess.run([*run_as, str(binary / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)  # fmt: skip
        with open(cluster.data / "postgresql.conf", "a") as conf:  # a test server: no durability waits
            conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
