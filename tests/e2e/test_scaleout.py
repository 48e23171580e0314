"""Scale-out on this machine: PostgreSQL, two API replicas and two procrastinate workers, as processes.

Every test runs twice: with the artifact folder every process mounts ("file"), and with artifacts on S3
("s3": moto's server mode on a loopback port), where each process has its own cache folder and shares
nothing with the others but the database and the bucket.

Skipped, with the reason, only when no PostgreSQL answers at ENGRAM_TEST_PG (default 127.0.0.1:5432).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import throwaway_pg
from tests.e2e.conftest import Server, auth, start_server, stop_server, wait_job
from tests.e2e.support import PROBE, blobs, create, learn, wait_status
from tests.s3_server import moto_s3, new_bucket

pytestmark = pytest.mark.timeout(900)
QUICK = {"iterations": 30}  # where a test checks where jobs run, not what is learnt


@dataclass
class Cluster:
    a: Server
    b: Server
    workers: list[subprocess.Popen[bytes]]
    env: dict[str, str]
    root: Path

    def start_worker(self) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        log = open(self.root / f"worker-{n}.log", "wb")  # noqa: SIM115
        own = {"ENGRAM_DATA_DIR": str(self.root / f"w{n}")}  # its own cache when the store is S3
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "worker"],
            env={**os.environ, **self.env, **(own if "ENGRAM_ARTIFACTS_URL" in self.env else {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child has its own handle
        self.workers.append(proc)
        return proc


@pytest.fixture(scope="module", params=["file", "s3"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(throwaway_pg("engram_test"))  # a fresh database per store
        env = {"ENGRAM_DATABASE_URL": pg_url, "ENGRAM_ARTIFACTS_DIR": str(root / "shared-artifacts"),
               "ENGRAM_STALE_AFTER_SECONDS": "5", "ENGRAM_HEARTBEAT_SECONDS": "0.5", "ENGRAM_DATA_DIR": str(root / "w")}  # fmt: skip
        if request.param == "s3":
            s3 = stack.enter_context(moto_s3(root))
            del env["ENGRAM_ARTIFACTS_DIR"]  # each process caches bundles in its own data folder
            env |= {**s3, "ENGRAM_ARTIFACTS_URL": f"s3://{new_bucket(s3)}/engram"}
        yield from _cluster(root, env)


def _cluster(root: Path, env: dict[str, str]) -> Iterator[Cluster]:
    subprocess.run([sys.executable, "-m", "service.cli.main", "migrate"], env={**os.environ, **env}, check=True)
    a = start_server(root / "a", env, "--no-worker")
    b = start_server(root / "b", env, "--no-worker")
    c = Cluster(a, b, [], env, root)
    try:
        c.start_worker()
        c.start_worker()
        yield c
    finally:
        for w in c.workers:
            w.kill()
            w.wait()
        stop_server(a)
        stop_server(b)


def served_version(client: httpx.Client, name: str) -> int | None:
    r = client.post(f"/v1/classifiers/{name}/predict", json=PROBE, headers=auth("predict"))
    return int(r.json()["version"]) if r.status_code == 200 else None


def wait_version(client: httpx.Client, name: str, version: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if served_version(client, name) == version:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"version {version} not served within {timeout} s")


def test_learn_on_a_while_b_serves_then_promote_and_roll_back_through_b(cluster: Cluster) -> None:
    a, b = cluster.a.client(), cluster.b.client()
    create(a, "shared")
    assert (
        wait_job(a, learn(a, "shared", {"task": "t1", "strategy": "replay", "samples": blobs({"x": 0, "y": 3})}))[
            "status"
        ]
        == "promoted"
    )
    wait_version(b, "shared", 1, 5)
    failures: list[int] = []
    requests = [0]
    stop = threading.Event()

    def hammer() -> None:  # predictions through B during everything that follows
        with httpx.Client(base_url=cluster.b.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/classifiers/shared/predict", json=PROBE, headers=auth("predict"))
                requests[0] += 1
                if r.status_code != 200:
                    failures.append(r.status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        for i, (lab, centre) in enumerate([("z", -3.0), ("w", 6.0), ("v", 9.0)], start=2):
            job = wait_job(
                a, learn(a, "shared", {"task": f"t{i}", "strategy": "replay", "samples": blobs({lab: centre}, seed=i)})
            )
            assert job["status"] == "promoted" and job["version"] == i, job
        assert wait_version(b, "shared", 4, 2.0) <= 2.0
        # roll back and promote through B: A follows within 2 s
        r = b.post(
            "/v1/classifiers/shared/rollback", json={"to_version": 2, "reason": "scale-out test"}, headers=auth("admin")
        )
        assert r.status_code == 200, r.text
        assert served_version(b, "shared") == 2  # B swapped before answering
        lag_rollback = wait_version(a, "shared", 2, 2.0)
        r = b.post("/v1/classifiers/shared/versions/4/promote", json={}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        lag_promote = wait_version(a, "shared", 4, 2.0)
        print(f"replica A followed B's rollback in {lag_rollback:.2f} s and its promotion in {lag_promote:.2f} s")
    finally:
        stop.set()
        t.join()
    assert failures == []
    print(f"predictions through B meanwhile: {requests[0]} sent, {len(failures)} failed")


def test_two_jobs_for_one_classifier_run_one_after_the_other(cluster: Cluster) -> None:
    a, b = cluster.a.client(), cluster.b.client()
    create(a, "serial")
    body = {"task": "t", "strategy": "naive", "samples": blobs({"x": 0, "y": 3}),
            "options": {"iterations": 300}}  # long enough for the second to be queued behind the first
    first, second = learn(a, "serial", body), learn(b, "serial", {**body, "task": "u"})
    j1, j2 = wait_job(a, first), wait_job(a, second)
    assert j1["status"] in ("promoted", "rejected") and j2["status"] in ("promoted", "rejected")
    assert str(j2["started_at"]) >= str(j1["finished_at"]), (j1, j2)
    assert j2["parent"] == j1["version"] or j1["status"] == "rejected"


def test_a_killed_worker_fails_its_job_and_frees_the_classifier(cluster: Cluster) -> None:
    a = cluster.a.client()
    create(a, "victim")
    assert (
        wait_job(a, learn(a, "victim", {"task": "t", "strategy": "naive", "samples": blobs({"x": 0, "y": 3}), "options": QUICK}))[
            "status"
        ]
        == "promoted"
    )
    job_id = learn(
        a, "victim", {"task": "u", "strategy": "naive", "samples": blobs({"z": -3}), "options": {"iterations": 100_000}}
    )
    job = wait_status(a, job_id, "running")
    pid = int(str(job["worker"]).split(":")[1])
    os.kill(pid, signal.SIGKILL)
    job = wait_job(a, job_id, timeout=60)
    assert job["status"] == "failed" and "stopped responding" in str(job["error"]), job
    assert a.get("/v1/classifiers/victim", headers=auth("predict")).json()["active_version"] == 1
    cluster.start_worker()  # replace it, as an orchestrator would
    # the classifier's lock was released: its next job runs
    nxt = wait_job(
        a, learn(a, "victim", {"task": "u", "strategy": "naive", "samples": blobs({"z": -3, "q": 5}), "options": QUICK}), timeout=120
    )
    assert nxt["status"] in ("promoted", "rejected") and nxt["worker"] != job["worker"]
