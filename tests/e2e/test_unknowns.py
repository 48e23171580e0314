"""Unknown inputs through the real server: novelty per prediction, the rate in /metrics, capture and export."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.novelty import auroc
from tests.e2e.conftest import Server, auth, png_b64
from tests.e2e.support import PROBE, blobs, create, engram, finished, learn, problem, samples

KNOWN = (0, 1, 2, 3, 4)


def _predict(c: httpx.Client, name: str, images: np.ndarray) -> dict[str, Any]:
    body = {"inputs": [{"image_b64": png_b64(img)} for img in images]}
    r = c.post(f"/v1/classifiers/{name}/predict", json=body, headers=auth("predict"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _counter(metrics: str, name: str, classifier: str) -> float:
    found = re.findall(rf'^{name}{{classifier="{classifier}",version="\d+"}} ([0-9.e+]+)$', metrics, re.M)
    return sum(float(v) for v in found)


def test_unknown_digits_flagged_counted_captured_and_exported(
    server: Server, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    x_tr, y_tr, x_te, y_te = digits
    c = server.client()
    r = c.post("/v1/classifiers", headers=auth("admin"), json={
        "name": "open", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8},
        "unknowns": {"capture": True, "capture_max": 5}})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["unknowns"]["capture"] is True and r.json()["unknowns"]["known_rate"] == 0.95
    # capture keeps inputs: a job whose samples must be discarded is refused, naming why and what works
    body = {"task": "low", "samples": samples(x_tr, y_tr, KNOWN), "retention": "discard"}
    r = c.post("/v1/classifiers/open/learn", json=body, headers=auth("learn"))
    problem(r, 422, "captures inputs", "retention 'keep'")
    job = finished(c, learn(c, "open", {**body, "retention": "keep"}))
    assert job["status"] == "promoted", job
    novelty = job["report"]["novelty"]
    assert novelty["kind"] == "max_logit" and novelty["known_rate"] == 0.95

    known = _predict(c, "open", x_te[np.isin(y_te, KNOWN)])
    unknown = _predict(c, "open", x_te[~np.isin(y_te, KNOWN)])
    threshold = known["novelty_threshold"]
    assert threshold == novelty["threshold"]
    k = np.array([p["novelty"] for p in known["predictions"]])
    u = np.array([p["novelty"] for p in unknown["predictions"]])
    assert auroc(k, u) >= 0.9  # unknown digits score above known ones (0.99 on this seed)
    for p in [*known["predictions"], *unknown["predictions"]]:
        assert p["known"] == (p["novelty"] <= threshold)
    assert (k <= threshold).mean() >= 0.85  # calibrated at 0.95 on the gate's held-out samples
    flagged = int((u > threshold).sum() + (k > threshold).sum())
    assert flagged > 5

    metrics = c.get("/metrics").text
    assert _counter(metrics, "engram_unknown_predictions_total", "open") == flagged
    assert _counter(metrics, "engram_novelty_predictions_total", "open") == len(k) + len(u)
    plot = c.get("/ui/classifiers/open/unknown-rate").text  # the dashboard's plot beside the version timeline
    buckets = re.findall(r'data-rate="([0-9.]+)" data-scored="(\d+)" data-unknown="(\d+)"', plot)
    assert sum(int(n) for _, n, _ in buckets) == len(k) + len(u)
    assert sum(int(f) for _, _, f in buckets) == flagged
    assert 'id="unknown-rate"' in c.get("/ui/classifiers/open").text
    held = c.get("/v1/classifiers/open/unknowns", headers=auth("learn")).json()
    assert len(held["items"]) == 5  # bounded: the newest five of the flagged inputs
    assert all(item["novelty"] > threshold for item in held["items"])

    out = engram(server, "unknowns", "export", "open", str(tmp_path / "sort-me"), role="learn")
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "sort-me" / "unsorted").glob("*.png"))) == 5
    assert c.get("/v1/classifiers/open/unknowns", headers=auth("learn")).json()["items"] == []


def test_no_capture_unless_asked_and_no_novelty_without_class_models(server: Server) -> None:
    c = server.client()
    create(c, "closed")
    job = finished(c, learn(c, "closed", {"task": "t", "strategy": "naive", "options": {"iterations": 30},
                                         "samples": blobs({"a": 0, "b": 3})}))
    assert job["status"] == "promoted", job
    assert job["report"]["novelty"] is None
    r = c.post("/v1/classifiers/closed/predict", json=PROBE, headers=auth("predict")).json()
    assert r["novelty_threshold"] is None
    assert all(p["novelty"] is None and p["known"] is None for p in r["predictions"])

    create(c, "quiet")  # class models, capture off: far-away inputs are flagged but not kept
    job = finished(c, learn(c, "quiet", {"task": "t", "samples": blobs({"a": 0, "b": 3}, n=15)}))
    assert job["status"] == "promoted", job
    far = {"inputs": [{"vector": [40.0, -40.0, 40.0, -40.0]}]}
    r = c.post("/v1/classifiers/quiet/predict", json=far, headers=auth("predict")).json()
    assert r["predictions"][0]["known"] is False
    assert c.get("/v1/classifiers/quiet/unknowns", headers=auth("learn")).json()["items"] == []


def _drift(images: np.ndarray) -> np.ndarray:
    """A class whose look drifts: strokes moved two pixels right and fainter (8x8 digits, values 0..16)."""
    return np.roll(images, 2, axis=-1) * 0.6


def _accuracy(c: httpx.Client, name: str, images: np.ndarray, label: str) -> float:
    return float(np.mean([p["label"] == label for p in _predict(c, name, images)["predictions"]]))


def test_flagged_inputs_labelled_with_a_known_class_are_learnt_end_to_end(
    server: Server, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    """The unknowns loop with fixes of a known class: drifted zeros are flagged and captured, exported, sorted
    into the known class's folder and learnt (the default class_models merges them into the class's statistics);
    then a direct batch of more drifted zeros, as samples, raises the class's accuracy again or keeps it."""
    x_tr, y_tr, x_te, y_te = digits
    c = server.client()
    r = c.post("/v1/classifiers", headers=auth("admin"), json={
        "name": "drifting", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8},
        "unknowns": {"capture": True, "capture_max": 60}})  # fmt: skip
    assert r.status_code == 201, r.text
    job = finished(c, learn(c, "drifting", {"task": "low", "samples": samples(x_tr, y_tr, KNOWN)}))
    assert job["status"] == "promoted", job
    zeros_tr, zeros_te = _drift(x_tr[y_tr == 0]), _drift(x_te[y_te == 0])
    before = _accuracy(c, "drifting", zeros_te, "0")
    flagged = [p for p in _predict(c, "drifting", zeros_tr[:60])["predictions"] if p["known"] is False]
    assert len(flagged) >= 20, len(flagged)  # the drifted zeros are far from every class as it was learnt

    out = engram(server, "unknowns", "export", "drifting", str(tmp_path / "sort-me"), role="learn")
    assert out.returncode == 0, out.stderr
    exported = sorted((tmp_path / "sort-me" / "unsorted").glob("*.png"))
    assert len(exported) == len(flagged)
    (tmp_path / "sort-me" / "0").mkdir()  # a person looks at them: they are all zeros, a known class
    for f in exported:
        f.rename(tmp_path / "sort-me" / "0" / f.name)
    (tmp_path / "sort-me" / "unsorted").rmdir()
    out = engram(server, "learn", "drifting", str(tmp_path / "sort-me"), "--task", "fixes", role="learn")
    assert out.returncode == 0, out.stdout + out.stderr
    job = finished(c, re.findall(r"queued job (\S+)", out.stdout)[0])
    assert job["status"] == "promoted", job
    middle = _accuracy(c, "drifting", zeros_te, "0")
    assert middle > before + 0.2, (before, middle)

    body = {"task": "more-zeros", "samples": samples(zeros_tr[60:], y_tr[y_tr == 0][60:], (0,))}
    job = finished(c, learn(c, "drifting", body))
    assert job["status"] == "promoted", job
    after = _accuracy(c, "drifting", zeros_te, "0")
    assert after >= middle - 0.02, (middle, after)
    known = _accuracy(c, "drifting", x_te[y_te == 1], "1")
    assert known > 0.9  # the other classes hold
