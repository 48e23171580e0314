"""Generative replay at 28x28 with every service default: five digit tasks over HTTP, no data kept, each promoted.

The 8x8 digits are uploaded as PNGs and the service resizes them to the classifier's 28x28, so the network,
the generator and the gate all work at 28x28 (the size of scanned-digit sets), on the backbone a grey 28x28
classifier gets by default. Before the per-class generators, tasks 3-5 were rejected here.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.conftest import Server, auth, png_b64, wait_job
from tests.e2e.support import samples, wait_serving

pytestmark = pytest.mark.timeout(900)


def test_five_tasks_at_28px_with_defaults_all_promoted(server: Server, digits: tuple[np.ndarray, ...]) -> None:
    x_tr, y_tr, x_te, y_te = digits
    c = server.client()
    r = c.post("/v1/classifiers", headers=auth("admin"),
               json={"name": "digits28", "input": {"kind": "image", "channels": 1, "height": 28, "width": 28}})  # fmt: skip
    assert r.status_code == 201, r.text
    backbone = r.json()["backbone"]
    for t in range(5):
        pair = (2 * t, 2 * t + 1)
        body = {"task": f"d{pair[0]}{pair[1]}", "strategy": "generative_replay", "retention": "discard",
                "samples": samples(x_tr, y_tr, pair)}  # fmt: skip
        r = c.post("/v1/classifiers/digits28/learn", json=body, headers=auth("learn"))
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"], timeout=600)
        assert job["status"] == "promoted", job
        print(f"\ntask {t + 1} promoted in {job['seconds']}")
    wait_serving(c, "digits28", 5)
    r = c.post("/v1/classifiers/digits28/predict", headers=auth("predict"),
               json={"inputs": [{"image_b64": png_b64(img)} for img in x_te]})  # fmt: skip
    assert r.status_code == 200, r.text
    accuracy = np.mean([p["label"] == str(int(t)) for p, t in zip(r.json()["predictions"], y_te, strict=True)])
    print(f"28x28, backbone {backbone}: held-out accuracy over all 10 classes {accuracy:.3f} on {len(y_te)} digits")
    assert accuracy >= 0.9, accuracy
