"""Real streams through the service with its defaults, judged by its own gate (issues 17 and 18).

- ``mnist-5k`` (5,000 real 28x28 handwritten digits, ``../shared/data/mnist-5k``): five tasks of two digits
  over HTTP with the default strategy and ``retention: discard``; every task promoted, and the served version
  classifies the held-out 30% of all ten digits above a floor.
- ``cifar10-mini`` photos, five tasks of two classes on the default pretrained backbone: joint training and the
  defaults promote every task (new classes that resemble old ones are confusion, not forgetting), while
  fine-tuning (``naive``) is rejected from task 2.
Each skips with a clear message when its data are absent.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from model_core.data import mnist_5k_arrays, stratified_split
from tests.e2e.conftest import Server, auth, wait_job

pytestmark = pytest.mark.timeout(1200)
CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-mini"
PHOTOS_PER_CLASS = 100  # of cifar10-mini's 500 a class, to keep the suite's time; the gate holds out 20% of them
TEST_PER_CLASS = 50


def png(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def learn_stream(c: httpx.Client, name: str, inp: dict[str, Any], tasks: list[list[tuple[str, str]]],
                 strategy: str | None, retention: str, stop_after: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Learn ``tasks`` in order (``strategy`` None: the request names none, so the classifier's default)."""
    r = c.post("/v1/classifiers", headers=auth("admin"), json={"name": name, "input": inp})
    assert r.status_code == 201, r.text
    jobs = []
    for t, items in enumerate(tasks[:stop_after], 1):
        body = {"task": f"t{t}", "retention": retention, "samples": [{"label": lab, "image_b64": b} for lab, b in items],
                **({"strategy": strategy} if strategy else {})}  # fmt: skip
        r = c.post(f"/v1/classifiers/{name}/learn", json=body, headers=auth("learn"))
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"], timeout=900)
        report = job.get("report") or {}
        print(f"\n{name} task {t}: {job['status']} ({job['strategy']}) {report.get('training')} {report.get('seconds')}"
              f"\n  tasks {[(x['task'], x.get('before'), x['after'], x.get('cause')) for x in report.get('tasks', [])]}"
              f"\n  pairs {report.get('confused_pairs', [])[:3]}")  # fmt: skip
        jobs.append(job)
    return jobs


def served_accuracy(c: httpx.Client, name: str, test: list[tuple[str, str]]) -> tuple[float, int]:
    """The accuracy of the version served right now, and its number (predicted in chunks, as a client would)."""
    right, version = 0, -1
    for i in range(0, len(test), 500):
        chunk = test[i : i + 500]
        r = c.post(f"/v1/classifiers/{name}/predict", headers=auth("predict"),
                   json={"inputs": [{"image_b64": b} for _, b in chunk]})  # fmt: skip
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        right += sum(p["label"] == lab for p, (lab, _) in zip(r.json()["predictions"], chunk, strict=True))
    return right / len(test), version


def test_mnist_5k_five_tasks_with_defaults_and_no_data_kept(server: Server) -> None:
    try:
        images, labels = mnist_5k_arrays()
    except FileNotFoundError as exc:
        pytest.skip(f"{exc}; this test needs the real 28x28 digits (see shared/data/README.md)")
    train, test = stratified_split(labels, 0.3, seed=0)
    tasks = [[(str(labels[i]), png(images[i])) for i in train if labels[i] in (2 * t, 2 * t + 1)] for t in range(5)]
    c = server.client()
    inp = {"kind": "image", "channels": 1, "height": 28, "width": 28}
    jobs = learn_stream(c, "mnist", inp, tasks, None, "discard")
    assert [j["status"] for j in jobs] == ["promoted"] * 5, [(j["status"], j["report"]["failures"]) for j in jobs]
    accuracy, version = served_accuracy(c, "mnist", [(str(labels[i]), png(images[i])) for i in test])
    print(f"mnist-5k, 5 tasks, the default {jobs[0]['strategy']}: served v{version} {accuracy:.3f} on {len(test)} held-out digits")
    assert version == 5 and accuracy >= 0.93, accuracy


def photo_tasks() -> tuple[list[list[tuple[str, str]]], list[tuple[str, str]]]:
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"the cifar10-mini photos are not at {CIFAR}; this test needs them (see shared/data/README.md)")
    classes = sorted(p.name for p in (CIFAR / "train").iterdir())

    def read(split: str, c: str, n: int) -> list[tuple[str, str]]:
        return [(c, base64.b64encode(f.read_bytes()).decode()) for f in sorted((CIFAR / split / c).iterdir())[:n]]

    tasks = [read("train", classes[i], PHOTOS_PER_CLASS) + read("train", classes[i + 1], PHOTOS_PER_CLASS)
             for i in range(0, len(classes), 2)]  # fmt: skip
    return tasks, [item for c in classes for item in read("test", c, TEST_PER_CLASS)]


PHOTOS = {"kind": "image", "channels": 3, "height": 32, "width": 32}


@pytest.mark.parametrize(("strategy", "retention"), [("joint", "keep"), (None, "discard")])
def test_cifar10_mini_five_tasks_every_task_promoted(server: Server, strategy: str | None, retention: str) -> None:
    tasks, test = photo_tasks()
    c = server.client()
    name = f"photos-{strategy or 'default'}"
    jobs = learn_stream(c, name, PHOTOS, tasks, strategy, retention)
    assert [j["status"] for j in jobs] == ["promoted"] * 5, [(j["status"], j["report"]["failures"]) for j in jobs]
    accuracy, version = served_accuracy(c, name, test)
    print(f"cifar10-mini 5x2, {strategy}: served v{version} {accuracy:.3f} on {len(test)} held-out photos")
    assert version == 5 and accuracy >= 0.6, accuracy


def test_cifar10_mini_fine_tuning_is_rejected_from_task_2(server: Server) -> None:
    tasks, _ = photo_tasks()
    jobs = learn_stream(server.client(), "photos-naive", PHOTOS, tasks, "naive", "discard", stop_after=2)
    assert [j["status"] for j in jobs] == ["promoted", "rejected"], [j["status"] for j in jobs]
    old = jobs[1]["report"]["tasks"][0]
    assert old["cause"] in ("intrusion", "forgetting") and old["passed"] is False, old
