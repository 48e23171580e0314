"""Load: predictions at concurrency 32 for 30 s while a training job runs (and then promotes): zero errors.

Loopback only; the load generator is ``service.cli.loadgen.run_load`` (closed loop, keep-alive connections). The
test asserts correctness under load, not speed: every answer is a 200 whose predictions match its inputs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.datasets import load_digits

from service.cli.loadgen import LoadResult, run_load
from tests.e2e.conftest import KEYS, Server, auth, png_b64, start_server, stop_server, wait_job
from tests.e2e.support import wait_status

pytestmark = pytest.mark.timeout(600)
CONCURRENCY, SECONDS = 32, 30.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("load") / "data")
    yield s
    stop_server(s)


def test_predictions_under_load_during_training_all_succeed(srv: Server) -> None:
    d = load_digits()
    c = srv.client()
    r = c.post("/v1/classifiers", headers=auth("admin"),
               json={"name": "digits", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}})  # fmt: skip
    assert r.status_code == 201, r.text

    def task(classes: tuple[int, ...]) -> list[dict[str, str]]:
        return [{"label": str(t), "image_b64": png_b64(img)} for img, t in zip(d.images, d.target, strict=True)
                if t in classes]  # fmt: skip

    body = {"task": "a", "strategy": "replay", "samples": task((0, 1, 2))}
    first = c.post("/v1/classifiers/digits/learn", json=body, headers=auth("learn")).json()["job_id"]
    assert wait_job(c, first)["status"] == "promoted"
    # A second job that trains for a while (replay keeps tasks a and b), started before the load.
    body = {"task": "b", "strategy": "replay", "samples": task((3, 4, 5)), "options": {"iterations": 600}}
    second = c.post("/v1/classifiers/digits/learn", json=body, headers=auth("learn")).json()["job_id"]
    wait_status(c, second, "running")

    # Requests of 1, 2 and 5 images with different top_k, so batches mix request shapes.
    bodies = []
    for i in range(60):
        n = (1, 2, 5)[i % 3]
        imgs = d.images[i * 5 : i * 5 + n]
        bodies.append(
            json.dumps({"inputs": [{"image_b64": png_b64(img)} for img in imgs], "top_k": 1 + i % 3}).encode()
        )
    holder: dict[str, LoadResult] = {}
    load = threading.Thread(target=lambda: holder.setdefault("r", run_load(
        srv.url, "/v1/classifiers/digits/predict", bodies, CONCURRENCY, SECONDS,
        headers={"Authorization": f"Bearer {KEYS['predict']}"}, read_version=True)))  # fmt: skip
    load.start()
    load.join(SECONDS + 120)
    assert not load.is_alive()
    result = holder["r"]
    job = wait_job(c, second, timeout=600)
    print(f"\nload: {result.sent} requests sent at concurrency {CONCURRENCY} for {SECONDS:g} s, "
          f"{result.error_count} errors, statuses {dict(result.statuses)}, versions {dict(result.versions)}, "
          f"p50 {result.percentile(50) * 1000:.1f} ms, p99 {result.percentile(99) * 1000:.1f} ms; "
          f"training job {job['status']}")  # fmt: skip
    assert result.error_count == 0, result.errors
    assert result.sent > CONCURRENCY * 10 and result.statuses == {200: result.sent}
    assert job["status"] == "promoted", job
    assert set(result.versions) <= {1, 2} and 1 in result.versions

    # The answers are right, not only 200s: a batched answer equals the answer for the same images alone.
    probe = [{"image_b64": png_b64(img)} for img in d.images[:5]]
    together = c.post("/v1/classifiers/digits/predict", json={"inputs": probe, "top_k": 3}, headers=auth("predict"))
    alone = [c.post("/v1/classifiers/digits/predict", json={"inputs": [p], "top_k": 3}, headers=auth("predict"))
             for p in probe]  # fmt: skip
    one_by_one = [p for r in alone for p in r.json()["predictions"]]
    batched = together.json()["predictions"]
    for a, b in zip(one_by_one, batched, strict=True):  # same labels; scores equal up to float summation order
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert np.allclose([t["score"] for t in a["top_k"]], [t["score"] for t in b["top_k"]], atol=1e-5)
    labels = [p["label"] for p in batched]
    assert np.mean([lab == str(t) for lab, t in zip(labels, d.target[:5], strict=True)]) >= 0.6
