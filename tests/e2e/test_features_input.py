"""Inputs that are already features, through the service: a vector classifier created with backbone ``identity``
gets the analytic head by default (random features, balanced), learns two tasks of 8x8 digits sent as 64-value
vectors, and serves a calibrated score: the temperature fitted on the gate's held-out samples sits in the served
graph, and the report carries it with its expected calibration error. A real server, HTTP only."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.conftest import Server, auth
from tests.e2e.support import digit_vectors, finished

pytestmark = pytest.mark.timeout(300)


def test_an_identity_classifier_learns_embeddings_with_the_analytic_default_and_a_calibrated_score(
    server: Server,
) -> None:
    client = server.client()
    r = client.post("/v1/classifiers", headers=auth("admin"),
                    json={"name": "embedded", "input": {"kind": "vector", "dim": 64}, "backbone": "identity"})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["backbone"] == "identity"
    jobs = []
    for task, classes in (("low", (0, 1, 2, 3, 4)), ("high", (5, 6, 7, 8, 9))):
        body = {"task": task, "retention": "discard", "samples": digit_vectors(classes)}
        job_id = client.post("/v1/classifiers/embedded/learn", json=body, headers=auth("learn")).json()["job_id"]
        jobs.append(finished(client, job_id))
    assert [j["status"] for j in jobs] == ["promoted", "promoted"], [j["report"]["failures"] for j in jobs]
    assert jobs[1]["strategy"] == "analytic"
    calibration = jobs[1]["report"]["calibration"]
    # fitted on the held-out samples of both tasks only (the gate's 20% of 1,797), never the ones trained on;
    # its out-of-sample error well under the raw one
    assert 0.15 * 1797 < calibration["samples"] < 0.25 * 1797
    assert calibration["temperature"] > 0 and calibration["ece"] < 0.05 < calibration["ece_before"]

    samples = digit_vectors(tuple(range(10)))
    preds = []
    for i in range(0, len(samples), 256):
        r = client.post("/v1/classifiers/embedded/predict", headers=auth("predict"),
                        json={"inputs": [{"vector": s["vector"]} for s in samples[i : i + 256]]})  # fmt: skip
        assert r.status_code == 200, r.text
        preds += r.json()["predictions"]
    right = np.array([p["label"] == s["label"] for p, s in zip(preds, samples, strict=True)])
    scores = np.array([p["score"] for p in preds])
    assert right.mean() > 0.95
    assert abs(scores.mean() - right.mean()) < 0.05  # the served score says how often it is right
