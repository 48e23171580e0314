"""kill -9 of the worker at each stage boundary of publishing a version (issue 11), N times each: the
classifier's next job always succeeds, and in the end the database and the artifact store agree.

The server runs without a worker; the test starts worker processes (``python -m tests.faults``) with the
test-only hook ``ENGRAM_TEST_CRASH_AT=<stage>@2`` (tests.faults.CrashHook): each runs one job, which must be
promoted (whatever the previous worker left behind), then SIGKILLs itself when its second job reaches the
stage. Cost: a worker start and two small jobs per kill; 4 stages x 2 = 8 kills. Measured 342 s on a
2-core machine shared with other test runs and PYTHONDONTWRITEBYTECODE=1, where each worker's first job
recompiles torch._dynamo (~15 s, imported by the Adam optimiser); less where bytecode is cached.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import start_server, stop_server, wait_job
from tests.e2e.support import blobs, create, learn
from tests.faults import CRASH_AT_ENV, CRASH_STAGES

pytestmark = pytest.mark.timeout(900)
STAGES = CRASH_STAGES  # trained, bundle-written, row-committed, promoted
ROOT = Path(__file__).resolve().parents[2]  # where ``python -m tests.faults`` finds the tests package
REPEATS = 1
ENV = {"ENGRAM_STALE_AFTER_SECONDS": "3", "ENGRAM_HEARTBEAT_SECONDS": "0.5", "ENGRAM_WORKER_POLL_SECONDS": "0.2",
       "OMP_NUM_THREADS": "1"}  # fmt: skip


def start_worker(data_dir: Path, log: Path, crash_at: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "ENGRAM_DATA_DIR": str(data_dir)}
    env.pop(CRASH_AT_ENV, None)
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.faults"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def store_and_rows(data_dir: Path) -> tuple[set[str], dict[int, tuple[str, str]], int | None]:
    """Bundle folders on disk; version rows (number -> status, artifact); the active pointer."""
    root = data_dir / "artifacts"
    folders = {str(p.relative_to(root)) for p in (root / "classifiers" / "pc").iterdir()}
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'engram.db'}?mode=ro", uri=True, timeout=30)) as db:
        rows = {n: (st, art) for n, st, art in db.execute("SELECT number, status, artifact FROM versions")}
        (pointer,) = db.execute("SELECT active_version FROM classifiers WHERE name = 'pc'").fetchone()
    return folders, rows, pointer


def test_kill_9_at_each_publishing_stage_never_blocks_the_next_job(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    srv = start_server(data_dir, ENV, "--no-worker")
    workers: list[subprocess.Popen[bytes]] = []
    stats: Counter[str] = Counter()
    log = tmp_path / "workers.log"
    try:
        c = srv.client()
        create(c, "pc", gate={"tolerance": 1, "new_task_floor": 0})
        k = 0

        def job() -> str:
            nonlocal k
            k += 1
            labels = {f"a{k}": float(k % 5), f"b{k}": float(-(k % 5) - 3)}
            return learn(c, "pc", {"task": f"t{k}", "strategy": "naive", "samples": blobs(labels, n=8, seed=k),
                                   "options": {"iterations": 20}})  # fmt: skip

        for _ in range(REPEATS):
            for stage in STAGES:
                workers.append(start_worker(data_dir, log, f"{stage}@2"))
                done = wait_job(c, job(), timeout=180)  # after the previous kill, whatever its stage
                assert done["status"] == "promoted", done
                stats["next jobs promoted"] += 1
                victim = job()
                assert workers[-1].wait(180) == -signal.SIGKILL, f"the worker did not die at {stage}"
                stats[f"killed at {stage}"] += 1
                stats["kills"] += 1
        workers.append(start_worker(data_dir, log, None))  # its start sweeps what the kills left
        final = wait_job(c, job(), timeout=180)
        assert final["status"] == "promoted", final
        victim_status = wait_job(c, victim)["status"]  # the last victim died after promotion: it is promoted
        assert victim_status == "promoted", victim_status

        folders, rows, pointer = store_and_rows(data_dir)
        assert sorted(rows) == list(range(1, len(rows) + 1)), f"version numbers have gaps: {sorted(rows)}"
        assert [n for n, (st, _) in rows.items() if st == "active"] == [pointer]
        assert {art for _, art in rows.values()} == folders, "a folder without a row, or a row without a folder"
        for _, art in rows.values():
            assert (data_dir / "artifacts" / art / "model.onnx").exists(), art
        # every kill at row-committed leaves its version as a candidate: it passed the gate, nothing promoted it
        assert sum(st == "candidate" for st, _ in rows.values()) == REPEATS
        swept = sum(int(line.split("swept ", 1)[1].split()[0]) for line in log.read_text().splitlines()
                    if "orphan bundle folder" in line)  # fmt: skip
        assert swept >= REPEATS, "the kills after the bundle write left folders that no worker start swept"
        stats["orphans swept"] = swept
        stats["versions"] = len(rows)
        jobs = c.get("/v1/classifiers/pc", headers={"Authorization": "Bearer adm-secret-1"}).json()
        assert jobs["active_version"] == pointer
        print(f"publish crash: {dict(stats)}")
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        stop_server(srv)
