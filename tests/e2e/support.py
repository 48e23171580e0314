"""Helpers shared by the e2e test files: request bodies, calls that create and teach a classifier, the CLI as
a subprocess. Test files import from here, never from one another (the load generator is the package's own,
``service.cli.loadgen``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, cast

import httpx
import numpy as np
from sklearn.datasets import load_digits

from tests.e2e.conftest import KEYS, Server, auth, png_b64, wait_job

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


def samples(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]) -> list[dict[str, str]]:
    return [{"label": str(int(t)), "image_b64": png_b64(img)} for img, t in zip(x, y, strict=True) if t in classes]


def wait_serving(client: httpx.Client, name: str, version: int) -> None:
    """Poll until the server's predict path answers with ``version`` (it follows the worker's promotion)."""
    deadline = time.monotonic() + 10
    probe = {"inputs": [{"image_b64": png_b64(np.zeros((8, 8)))}]}
    while time.monotonic() < deadline:
        r = client.post(f"/v1/classifiers/{name}/predict", json=probe, headers=auth("predict"))
        if r.status_code == 200 and r.json()["version"] == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"version {version} was not served within 10 s")


# Replay made useless: the VAE gets one optimiser step per task, so it cannot produce the old classes.
STARVED = {"generator": "vae", "generator_iterations": 1}


def digit_vectors(classes: tuple[int, ...]) -> list[dict[str, Any]]:
    d = load_digits()
    return [{"label": str(int(t)), "vector": (x / 16).tolist()} for x, t in zip(d.data, d.target, strict=True)
            if t in classes]  # fmt: skip


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return cast(dict[str, Any], wait_job(client, job_id, timeout=120))


def learn_starved(client: httpx.Client, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Digits 0-2, then 3-4, with a starved generator and no kept data: the two finished jobs."""
    r = client.post(
        "/v1/classifiers", headers=auth("admin"), json={"name": name, "input": {"kind": "vector", "dim": 64}}
    )
    assert r.status_code == 201, r.text
    jobs = []
    for task, classes in (("zero-two", (0, 1, 2)), ("three-four", (3, 4))):
        body = {"task": task, "strategy": "generative_replay", "retention": "discard", "params": STARVED,
                "options": {"iterations": 100}, "samples": digit_vectors(classes)}  # fmt: skip
        r = client.post(f"/v1/classifiers/{name}/learn", json=body, headers=auth("learn"))
        assert r.status_code == 202, r.text
        jobs.append(finished(client, r.json()["job_id"]))
    return jobs[0], jobs[1]
