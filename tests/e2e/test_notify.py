"""LISTEN/NOTIFY fan-out: with the poll interval set to 60 s, a replica follows a promotion or rollback made
through another replica, or by a worker, within a second. Only NOTIFY can do that; the poll would take up
to a minute. The lag is printed, beside the time the replica's log says its session build took.

Cost: PostgreSQL, two replicas and one worker as processes, two short jobs on 4-d vectors (about 30 s).
Skipped, with the reason, only when no PostgreSQL answers (as tests/e2e/test_scaleout.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import throwaway_pg
from tests.e2e.conftest import Server, auth, start_server, stop_server, wait_job
from tests.e2e.support import PROBE, blobs, create, learn

pytestmark = pytest.mark.timeout(300)
POLL = 60.0  # seconds: far longer than any lag this test accepts


@dataclass
class Pair:
    a: Server
    b: Server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("notify")
    with throwaway_pg("engram_notify") as url:
        env = {"ENGRAM_DATABASE_URL": url, "ENGRAM_ARTIFACTS_DIR": str(root / "artifacts"),
               "ENGRAM_SERVING_POLL_SECONDS": str(POLL), "ENGRAM_DATA_DIR": str(root / "w")}  # fmt: skip
        subprocess.run([sys.executable, "-m", "service.cli.main", "migrate"], env={**os.environ, **env}, check=True)
        a = start_server(root / "a", env, "--no-worker")
        b = start_server(root / "b", env, "--no-worker")
        with open(root / "worker.log", "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "service.cli.main", "worker"], env={**os.environ, **env},
                                      stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            yield Pair(a, b)
        finally:
            worker.kill()
            worker.wait()
            stop_server(a)
            stop_server(b)


def lag_until_served(srv: Server, name: str, version: int, since: float, timeout: float = 10) -> float:
    """Seconds from ``since`` (time.monotonic()) until ``srv`` answers predictions with ``version``."""
    c = srv.client()
    while time.monotonic() - since < timeout:
        r = c.post(f"/v1/classifiers/{name}/predict", json=PROBE, headers=auth("predict"))
        if r.status_code == 200 and r.json()["version"] == version:
            return time.monotonic() - since
        time.sleep(0.01)
    raise AssertionError(f"{srv.url} did not serve version {version} within {timeout} s (poll interval {POLL} s)")


def build_seconds(srv: Server, name: str, version: int) -> float:
    """The session build time of ``version`` in ``srv``'s log (service.application.serving logs each build)."""
    text = srv.log.read_text()
    found = re.findall(rf"built the session of {name} version {version} in ([0-9.]+) s", text)
    return float(found[-1]) if found else 0.0  # 0: it came from the replica's session cache


def test_replicas_follow_moves_made_elsewhere_at_once(pair: Pair) -> None:
    a, b = pair.a.client(), pair.b.client()
    create(a, "fan")
    lags: list[tuple[str, float, float]] = []
    for version, labels in ((1, {"x": 0.0, "y": 3.0}), (2, {"z": -3.0})):
        job = wait_job(a, learn(a, "fan", {"task": f"t{version}", "strategy": "replay", "samples": blobs(labels)}))
        done = time.monotonic()  # the worker committed the promotion before the job read as promoted
        assert job["status"] == "promoted" and job["version"] == version, job
        for name, srv in (("A", pair.a), ("B", pair.b)):
            lag = lag_until_served(srv, "fan", version, done)
            lags.append((f"worker promoted v{version}, replica {name}", lag, build_seconds(srv, "fan", version)))

    t0 = time.monotonic()
    r = b.post("/v1/classifiers/fan/rollback", json={"reason": "notify test"}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    lags.append(("B rolled back to v1, replica A", lag_until_served(pair.a, "fan", 1, t0), 0.0))  # v1 is cached
    t0 = time.monotonic()
    r = a.post("/v1/classifiers/fan/versions/2/promote", json={}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    lags.append(("A promoted v2, replica B", lag_until_served(pair.b, "fan", 2, t0), 0.0))

    print()
    for what, lag, build in lags:
        print(
            f"{what}: served after {lag * 1000:.0f} ms (session build {build * 1000:.0f} ms; poll interval {POLL:.0f} s)"
        )
    # NOTIFY, not the poll: each move is followed within 0.2 s plus the build, with a margin for the probe's
    # own requests on two shared cores; the poll could not have fired before 60 s.
    for what, lag, build in lags:
        assert lag < 0.2 + build + 0.8, (what, lag, build)


def test_without_postgresql_nothing_listens(tmp_path: Path) -> None:
    from service.persistence.notify import listen_url

    assert listen_url(f"sqlite:///{tmp_path / 'x.db'}") is None
    assert listen_url("postgresql+psycopg://u:secret@h:5/db") == "postgresql://u:secret@h:5/db"
