"""Helpers shared by the e2e test files: request bodies, calls that create and teach a classifier, the CLI as
a subprocess. Test files import from here, never from one another (the load generator is the package's own,
``service.cli.loadgen``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np

from tests.e2e.conftest import KEYS, Server, auth

PROBE = {"inputs": [{"vector": [0.0, 0.0, 0.0, 0.0]}, {"vector": [3.0, 3.0, 3.0, 3.0]}]}


def blobs(labels: dict[str, float], n: int = 12, seed: int = 0) -> list[dict[str, object]]:
    """``n`` 4-dim samples per label, scattered around the label's value."""
    rng = np.random.default_rng(seed)
    return [
        {"label": lab, "vector": (rng.normal(size=4) * 0.2 + c).tolist()} for lab, c in labels.items() for _ in range(n)
    ]


def create(c: httpx.Client, name: str, **extra: object) -> None:
    """A classifier of 4-dim vectors named ``name``."""
    r = c.post(
        "/v1/classifiers", headers=auth("admin"), json={"name": name, "input": {"kind": "vector", "dim": 4}, **extra}
    )
    assert r.status_code == 201, r.text


def learn(c: httpx.Client, name: str, body: dict[str, object]) -> str:
    """Start a learning job; its id."""
    r = c.post(f"/v1/classifiers/{name}/learn", json=body, headers=auth("learn"))
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def wait_status(c: httpx.Client, job_id: str, status: str, timeout: float = 60) -> dict[str, object]:
    """Poll the job until it reaches ``status`` (e.g. "running"), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}", headers=auth("learn")).json()
        if job["status"] == status:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {status!r}")


def problem(r: httpx.Response, status: int, *words: str) -> None:
    """``r`` is a problem+json answer with ``status`` whose detail contains every one of ``words``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"]
    for w in words:
        assert w in body["detail"], body


def engram(srv: Server, *args: str, role: str = "admin") -> subprocess.CompletedProcess[str]:
    """The ``engram`` CLI against ``srv`` with the key of ``role``."""
    env = {**os.environ, "ENGRAM_URL": srv.url, "ENGRAM_KEY": KEYS[role], "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )

