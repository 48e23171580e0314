"""A database outage (issue 11): the test runs its own PostgreSQL cluster (initdb + pg_ctl on a free loopback
port; skipped, saying why, without the server binaries), serves through it, stops it for 10 s under
predict load, and then restarts it.

While it is down: predictions of the version already served keep succeeding (they never touch the
database); learn, promote and rollback answer 503 problem+json with Retry-After. Once it is back: a learn
job is queued, trained and promoted. Cost: about a minute (cluster start, two small jobs, the 10 s outage).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import pg_cluster
from tests.e2e.conftest import auth, start_server, stop_server, wait_job
from tests.e2e.support import PROBE, blobs, create, learn

pytestmark = pytest.mark.timeout(600)
OUTAGE_SECONDS = 10.0
PREDICTORS = 4  # threads sending predictions back to back through the outage


def test_predict_survives_a_database_outage_and_learning_resumes(tmp_path: Path) -> None:
    with pg_cluster() as pg:
        env = {"ENGRAM_DATABASE_URL": pg.url, "ENGRAM_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        srv = start_server(tmp_path / "data", env)  # with its embedded (procrastinate) worker
        try:
            c = srv.client()
            create(c, "dbo", gate={"tolerance": 1, "new_task_floor": 0})
            first = wait_job(c, learn(c, "dbo", {"task": "a", "strategy": "naive", "samples": blobs({"x": 0, "y": 3}),
                                                 "options": {"iterations": 30}}), timeout=240)  # fmt: skip
            assert first["status"] == "promoted", first
            deadline = time.monotonic() + 30
            while c.post("/v1/classifiers/dbo/predict", json=PROBE, headers=auth("predict")).status_code != 200:
                assert time.monotonic() < deadline, "version 1 never served"
                time.sleep(0.2)

            stop = threading.Event()
            answers: Counter[str] = Counter()
            lock = threading.Lock()

            def predict_loop() -> None:
                with httpx.Client(base_url=srv.url, timeout=30, headers=auth("predict")) as h:
                    while not stop.is_set():
                        try:
                            r = h.post("/v1/classifiers/dbo/predict", json=PROBE)
                            key = str(r.status_code) if r.status_code != 200 or r.json()["version"] == 1 else "wrong"
                        except httpx.HTTPError as exc:
                            key = type(exc).__name__
                        with lock:
                            answers[key] += 1

            def answered() -> int:
                with lock:
                    return sum(answers.values())

            threads = [threading.Thread(target=predict_loop) for _ in range(PREDICTORS)]
            for t in threads:
                t.start()
            try:
                deadline = time.monotonic() + 60
                while answered() < PREDICTORS:  # predictions flow before the database goes down
                    assert time.monotonic() < deadline, f"no predictions before the outage: {dict(answers)}"
                    time.sleep(0.05)
                pg.stop()
                down_at = time.monotonic()
                before = answered()
                refused: Counter[int] = Counter()
                for attempt in (
                    lambda: c.post("/v1/classifiers/dbo/learn", headers=auth("learn"),
                                   json={"task": "b", "strategy": "naive", "samples": blobs({"z": 6, "w": -3})}),
                    lambda: c.post("/v1/classifiers/dbo/versions/1/promote", json={}, headers=auth("admin")),
                    lambda: c.post("/v1/classifiers/dbo/rollback", json={"to_version": 1}, headers=auth("admin")),
                ):  # fmt: skip
                    r = attempt()
                    assert r.status_code == 503, r.text
                    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
                    assert int(r.headers["retry-after"]) > 0 and "database" in r.json()["detail"], r.text
                    refused[r.status_code] += 1
                assert c.get("/readyz").status_code == 503
                # down for OUTAGE_SECONDS, and at least until PREDICTORS requests sent after it went down were
                # answered (up to PREDICTORS answered meanwhile may have been sent before)
                deadline = down_at + OUTAGE_SECONDS + 60
                while time.monotonic() - down_at < OUTAGE_SECONDS or answered() < before + 2 * PREDICTORS:
                    assert time.monotonic() < deadline, f"predictions stalled with the database down: {dict(answers)}"
                    time.sleep(0.1)
                while_down = answered() - before
                pg.start()
                outage = time.monotonic() - down_at
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            during = sum(answers.values())
            print(f"database outage: {outage:.1f} s down; {during} predictions under load ({dict(answers)}), "
                  f"{while_down} while down; "
                  f"learn/promote/rollback while down: {dict(refused)}")  # fmt: skip
            assert answers == Counter({"200": during}), answers

            deadline = time.monotonic() + 60
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the service never became ready again"
                time.sleep(0.5)
            second = wait_job(c, learn(c, "dbo", {"task": "b", "strategy": "naive", "samples": blobs({"z": 6, "w": -3}),
                                                  "options": {"iterations": 30}}), timeout=300)  # fmt: skip
            assert second["status"] == "promoted", second
            print(f"after the outage: job {second['job_id']} {second['status']} as version {second['version']}")
        finally:
            stop_server(srv)
