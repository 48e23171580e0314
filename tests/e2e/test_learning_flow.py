"""The issue's end-to-end story: five digit tasks with generative replay and no kept data, a refused
EWC class addition, rollback, and learning again from the rolled-back version."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Server, auth, png_b64, wait_job
from tests.e2e.support import samples, wait_serving

pytestmark = pytest.mark.timeout(900)


def test_learn_five_tasks_refuse_ewc_roll_back_and_continue(server: Server, digits: tuple[np.ndarray, ...]) -> None:
    x_tr, y_tr, x_te, y_te = digits
    c = server.client()
    r = c.post("/v1/classifiers", headers=auth("admin"), json={
        "name": "digits", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}, "backbone": "mlp"})  # fmt: skip
    assert r.status_code == 201, r.text
    uploaded = samples(x_tr[:3], y_tr[:3], tuple(range(10)))

    for t in range(5):
        pair = (2 * t, 2 * t + 1)
        body = {"task": f"digits-{pair[0]}-{pair[1]}", "strategy": "generative_replay", "retention": "discard",
                "samples": samples(x_tr, y_tr, pair)}  # fmt: skip
        r = c.post("/v1/classifiers/digits/learn", json=body, headers=auth("learn"))
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "promoted", job
        assert job["version"] == t + 1 and job["parent"] == (t or None)
    wait_serving(c, "digits", 5)

    # predict over all 10 classes on held-out digits
    r = c.post("/v1/classifiers/digits/predict", headers=auth("predict"),
               json={"inputs": [{"image_b64": png_b64(img)} for img in x_te], "top_k": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["version"] == 5
    accuracy = np.mean([p["label"] == str(int(t)) for p, t in zip(answer["predictions"], y_te, strict=True)])
    print(f"\nheld-out accuracy of v5 over all 10 classes: {accuracy:.3f} on {len(y_te)} digits")
    assert accuracy >= 0.85, accuracy
    assert len(answer["predictions"][0]["top_k"]) == 3

    # no training sample survives on disk: no staged job files, and no uploaded PNG bytes anywhere
    assert list((server.data_dir / "artifacts" / "jobs").iterdir()) == []
    raw = [__import__("base64").b64decode(s["image_b64"]) for s in uploaded]
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(r in blob for r in raw), f"{path} holds an uploaded image"

    # EWC cannot add classes in class-incremental mode: rejected with an explanation, v5 keeps serving
    extra = {"task": "again-0-1-as-new", "strategy": "ewc", "retention": "discard",
             "samples": [{"label": f"new-{s['label']}", "image_b64": s["image_b64"]} for s in samples(x_tr, y_tr, (0, 1))]}  # fmt: skip
    job = wait_job(c, c.post("/v1/classifiers/digits/learn", json=extra, headers=auth("learn")).json()["job_id"])
    assert job["status"] == "rejected", job
    report = job["report"]
    assert "cannot add classes" in report["explanation"] and "generative_replay" in report["explanation"]
    assert any("accuracy fell" in f for f in report["failures"])
    assert c.get("/v1/classifiers/digits", headers=auth("predict")).json()["active_version"] == 5
    assert c.get("/v1/classifiers/digits/versions/6", headers=auth("predict")).json()["status"] == "rejected"

    # rollback to v3 restores v3's predictions exactly
    probe = {"inputs": [{"image_b64": png_b64(img)} for img in x_te[:50]], "top_k": 5}
    r = c.post("/v1/classifiers/digits/rollback", headers=auth("admin"), json={"to_version": 3, "reason": "e2e"})
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    after_rollback = c.post("/v1/classifiers/digits/predict", json=probe, headers=auth("predict")).json()
    pinned_v3 = c.post("/v1/classifiers/digits/predict", json={**probe, "version": 3}, headers=auth("predict")).json()
    assert after_rollback["version"] == 3 and after_rollback["predictions"] == pinned_v3["predictions"]
    assert {p["label"] for p in after_rollback["predictions"]} <= {str(i) for i in range(6)}

    # the next learn builds on v3 (its weights and generator), not on v5
    body = {"task": "digits-6-7-again", "strategy": "generative_replay", "retention": "discard",
            "samples": samples(x_tr, y_tr, (6, 7))}  # fmt: skip
    job = wait_job(c, c.post("/v1/classifiers/digits/learn", json=body, headers=auth("learn")).json()["job_id"])
    assert job["status"] == "promoted" and job["parent"] == 3 and job["version"] == 7, job
    v7 = c.get("/v1/classifiers/digits/versions/7", headers=auth("predict")).json()
    assert v7["parent"] == 3 and sorted(v7["classes"]) == [str(i) for i in range(8)]
    audit = c.get("/v1/classifiers/digits/audit", headers=auth("admin")).json()
    assert [a["action"] for a in audit][-2:] == ["rollback", "auto-promote"]
    assert audit[-2]["reason"] == "e2e" and audit[-2]["actor"].startswith("admin:")
    assert KEYS_NOT_IN(server.log.read_text())


def KEYS_NOT_IN(text: str) -> bool:
    from tests.e2e.conftest import KEYS

    return not any(k in text for k in KEYS.values())


def test_onnx_download_and_events_stream(server: Server) -> None:
    c = server.client()
    r = c.get("/v1/classifiers/digits/versions/1/model.onnx", headers=auth("learn"))
    assert r.status_code == 200 and len(r.content) > 1000
    jobs = c.get("/v1/classifiers/digits/versions/1", headers=auth("predict")).json()
    with httpx.stream("GET", f"{server.url}/v1/jobs/{jobs['job_id']}/events", headers=auth("learn"), timeout=10) as s:
        lines = [line for line in s.iter_lines() if line.startswith("event:")]
    assert lines == ["event: end"]  # a finished job streams its final state, then the stream ends
    assert Path(server.log).exists()
