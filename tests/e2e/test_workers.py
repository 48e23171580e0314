"""``engram serve --workers 2``: two serving processes on one port. Both serve, both follow a promotion
and a rollback (each through its own poll of the database), and SIGTERM stops them, and the local
training worker, cleanly.

Cost: one server with two serving processes and its worker, two short jobs on 4-d vectors (about 30 s).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import auth, start_server, wait_job
from tests.e2e.support import PROBE, blobs, create, learn

pytestmark = pytest.mark.timeout(300)


def process_view(url: str) -> tuple[int, int | None]:
    """(pid, active version of 'multi') of the process that answers a fresh connection's /metrics."""
    with httpx.Client(base_url=url, timeout=10, headers={"Connection": "close"}) as c:
        text = c.get("/metrics").text
    pid, version = 0, None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "engram_process_info":
                pid = int(sample.labels["pid"])
            elif sample.name == "engram_active_version" and sample.labels.get("classifier") == "multi":
                version = int(sample.value)
    return pid, version


def every_process_serves(url: str, version: int, processes: int = 2, timeout: float = 20) -> dict[int, int | None]:
    """Ask fresh connections until ``processes`` distinct processes have each reported ``version``."""
    seen: dict[int, int | None] = defaultdict(lambda: None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with httpx.Client(base_url=url, timeout=10, headers={"Connection": "close"}) as c:  # a predict warms it
            r = c.post("/v1/classifiers/multi/predict", json=PROBE, headers=auth("predict"))
            assert r.status_code == 200, r.text
        pid, got = process_view(url)
        seen[pid] = got
        if len(seen) >= processes and all(v == version for v in seen.values()):
            return dict(seen)
        time.sleep(0.05)
    raise AssertionError(f"not every process serves version {version} within {timeout} s: {dict(seen)}")


def test_two_serving_processes_serve_follow_and_stop_cleanly(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", {"ENGRAM_SERVING_POLL_SECONDS": "0.5"}, "--workers", "2")
    pids: list[int] = []
    try:
        c = srv.client()
        create(c, "multi")
        for version, labels in ((1, {"x": 0.0, "y": 3.0}), (2, {"z": -3.0})):
            job = wait_job(
                c, learn(c, "multi", {"task": f"t{version}", "strategy": "replay", "samples": blobs(labels)})
            )
            assert job["status"] == "promoted" and job["version"] == version, job
            seen = every_process_serves(srv.url, version)
        r = c.post("/v1/classifiers/multi/rollback", json={"reason": "workers test"}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        assert every_process_serves(srv.url, 1).keys() == seen.keys()  # the same two processes, both moved back
        pids += sorted(seen)
        print(f"\nserving processes {pids} each served v1, v2, then v1 after the rollback")
        assert srv.proc.pid not in pids  # the parent only supervises
    finally:
        if srv._client is not None:
            srv._client.close()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
        srv.log_file.close()
    log = srv.log.read_text()
    assert code == 0, log[-3000:]
    workers = [int(m) for m in re.findall(r"started worker process (\d+)", log)]
    assert workers, log[-3000:]
    for pid in [*pids, *workers]:  # every serving process, and the training worker, is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Traceback" not in log, log[-3000:]
    assert log.count("Application shutdown complete") == 2, log[-3000:]  # each process ran its shutdown
