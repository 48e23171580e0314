"""Versions reference each task's evaluation samples and their large strategy state as content stored once
(service.jobs.suite, model_core.state_content), on the filesystem store and on S3 (moto's server, a real S3
HTTP endpoint); versions of the old layout (eval.npz and a whole state.pt in the folder) keep loading, gating
and serving; the gate sees exactly what it saw before.

In process: the application services (SQLite) stage each learn request and a ``JobRunner`` runs it, as the
worker does. 8x8 digits as PNG photos (8-bit pixels), a the analytic head on the pixels: seconds a job.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from model_core.checkpoint import load_bundle, read_manifest
from service.application.services import EngramService
from service.domain.commands import Learn, NewClassifier, Predict, TrainOptions
from service.inference.sessions import ServingState
from service.jobs.suite import EVAL_FILE, KIND, read_suite
from service.jobs.training import SERVED, SERVED_FILE, JobRunner
from service.persistence.migrations import upgrade
from service.persistence.models import Version, make_engine, make_sessionmaker
from service.settings import Settings
from service.storage import open_store
from service.storage.base import ArtifactStore, bytes_to_arrays
from tests.s3_server import new_bucket

TASKS = (("t1", (0, 1)), ("t2", (2, 3)), ("t3", (4, 5)))
STRATEGY = "analytic"  # on the pixels as features: its state holds Gram matrices, as on a pretrained backbone


def png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


DIGITS = load_digits()


def samples(classes: tuple[int, ...], n: int = 30) -> list[dict[str, Any]]:
    out = []
    for c in classes:
        idx = np.flatnonzero(DIGITS.target == c)[:n]
        out += [{"label": str(c), "image_b64": png(DIGITS.images[i])} for i in idx]
    return out


def inputs(classes: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"image_b64": s["image_b64"]} for s in samples(classes, 3)]


class Engram:
    """The application services and one worker's job runner on one data folder (and store)."""

    def __init__(self, data: Path, url: str | None = None, shared_content: bool = True, shared_backbone: bool = True
                 ) -> None:  # fmt: skip
        data.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(data_dir=data, artifacts_url=url, shared_content=shared_content)  # type: ignore[call-arg]
        upgrade(self.settings.db_url)
        self.sessions = make_sessionmaker(make_engine(self.settings.db_url))
        self.store: ArtifactStore = open_store(self.settings.artifacts_path, self.settings.artifacts_url)
        self.service = EngramService(self.settings, self.sessions, self.store, ServingState())
        self.runner = JobRunner(self.sessions, self.store, "cpu", cache_dir=data / "cache",
                                shared_content=shared_content, shared_backbone=shared_backbone)  # fmt: skip

    def create(self, name: str) -> None:
        self.service.classifiers.create_classifier(NewClassifier(
            name, {"kind": "image", "channels": 1, "height": 8, "width": 8}, backbone="identity",
            gate={"tolerance": 1.0, "new_task_floor": 0.0}))  # every version promoted: one line of parents; fmt: skip

    def learn(self, name: str, task: str, classes: tuple[int, ...]) -> Version:
        job = self.service.learning.submit_learn(name, Learn(task, STRATEGY, samples(classes),
                                                             options=TrainOptions(iterations=150)))  # fmt: skip
        self.runner.run(job["job_id"])
        with self.sessions() as s:
            version = s.query(Version).filter_by(job_id=job["job_id"]).one_or_none()
            assert version is not None, self.service.learning.get_job(job["job_id"])
            s.expunge(version)
            return version

    def folder(self, version: Version) -> Path:
        return self.store.path(version.artifact)

    def predict(self, name: str, version: int, classes: tuple[int, ...]) -> list[str]:
        answer = asyncio.run(self.service.serving.predict(name, Predict(inputs(classes), version=version)))
        return [str(p["label"]) for p in answer["predictions"]]


def teach(engram: Engram, name: str, tasks: tuple[tuple[str, tuple[int, ...]], ...] = TASKS) -> list[Version]:
    engram.create(name)
    return [engram.learn(name, task, classes) for task, classes in tasks]


def gate_of(report: Any) -> Any:
    """A version's report without what varies from run to run (every "seconds": timings)."""
    if isinstance(report, dict):
        return {k: gate_of(v) for k, v in report.items() if k != "seconds"}
    return [gate_of(v) for v in report] if isinstance(report, list) else report


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "file":
        return None
    return f"s3://{new_bucket(request.getfixturevalue('s3_env'))}/engram"


def test_each_task_is_stored_once_and_a_version_needs_no_other_folder(tmp_path: Path, store_url: str | None) -> None:
    engram = Engram(tmp_path / "data", store_url)
    versions = teach(engram, "digits")
    manifests = [read_manifest(engram.folder(v)) for v in versions]
    segments = [[r for _, r in sorted(m.references.items()) if r["kind"] == KIND] for m in manifests]
    assert [[r["task"] for r in s] for s in segments] == [["t1"], ["t1", "t2"], ["t1", "t2", "t3"]]
    for earlier, later in itertools.pairwise(segments):
        assert later[: len(earlier)] == earlier  # the same content, by sha256: no copy of an older task
    assert {r["encoding"] for r in segments[-1]} == {"uint8"}  # 8-bit photos: their pixels, not float32
    for v, m in zip(versions, manifests, strict=True):
        assert EVAL_FILE not in m.files and not (engram.folder(v) / EVAL_FILE).exists()
        state = [r for r in m.references.values() if r["kind"] == "state-tensor"]
        assert state, "the strategy's large tensors are content"
        for ref in m.references.values():
            assert engram.store.content_path(ref["sha256"]).stat().st_size == ref["size"]
    # every sample of each task once in the store: the sum of the segments, not of the suites
    shas = {r["sha256"] for s in segments for r in s}
    assert len(shas) == 3
    suite, _ = read_suite(engram.folder(versions[-1]), manifests[-1].references, engram.store.content_path)
    assert len(suite["x"]) == sum(r["samples"] for r in segments[-1]) == 3 * 2 * 6  # 20% of 30 a class held out
    assert suite["x"].dtype == np.float32 and suite["x"].max() == 1.0

    # The parents' folders gone (as pruning will remove them): the newest version still loads and trains on.
    for v in versions[:-1]:
        engram.store.remove(v.artifact)
    fresh = Engram(tmp_path / "data", store_url)  # another host: an empty cache for S3
    learner, _ = load_bundle(fresh.folder(versions[-1]), fresh.store.content_path)
    assert learner.strategy_states[STRATEGY]["rf_gram"].shape[0] > 1
    fourth = fresh.learn("digits", "t4", (6, 7))
    assert fourth.number == 4 and fourth.report["tasks"]


def test_the_gate_sees_exactly_what_it_saw_with_the_old_layout(tmp_path: Path) -> None:
    old = teach(Engram(tmp_path / "old", shared_content=False), "digits")
    new_engram = Engram(tmp_path / "new")
    new = teach(new_engram, "digits")
    old_engram = Engram(tmp_path / "old", shared_content=False)
    for a, b in zip(old, new, strict=True):
        assert gate_of(a.report) == gate_of(b.report)
        fa, fb = old_engram.folder(a), new_engram.folder(b)
        old_suite = bytes_to_arrays((fa / EVAL_FILE).read_bytes())
        new_suite, refs = read_suite(fb, read_manifest(fb).references, new_engram.store.content_path)
        # the version's own labels for its suite: in eval.npz in the old layout, in its own served.npz in the new
        old_served = old_suite.pop(SERVED)
        assert np.array_equal(old_served, bytes_to_arrays((fb / SERVED_FILE).read_bytes())[SERVED])
        assert refs and set(old_suite) == set(new_suite)
        for k in old_suite:
            assert old_suite[k].dtype == new_suite[k].dtype and old_suite[k].tobytes() == new_suite[k].tobytes()
        la, _ = load_bundle(fa)
        lb, _ = load_bundle(fb, new_engram.store.content_path)
        assert _flat(la.strategy_states) == _flat(lb.strategy_states)  # bit for bit
        assert (fb / "state.pt").stat().st_size < (fa / "state.pt").stat().st_size / 4


def _flat(value: Any) -> Any:
    """Nested state with every tensor as (dtype, shape, bytes): compared bit for bit."""
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), tuple(value.shape), value.contiguous().numpy().tobytes())
    if isinstance(value, dict):
        return {k: _flat(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_flat(v) for v in value]
    return value


def test_versions_of_the_old_layout_load_gate_and_serve(tmp_path: Path) -> None:
    # the writer as it was before shared content and shared backbones: eval.npz, a whole state.pt, a whole graph
    before = Engram(tmp_path / "data", shared_content=False, shared_backbone=False)
    old = teach(before, "digits", TASKS[:2])
    assert (before.folder(old[1]) / EVAL_FILE).exists() and not read_manifest(before.folder(old[1])).references
    answers = before.predict("digits", 1, (0, 1))

    after = Engram(tmp_path / "data")  # the same store, upgraded
    third = after.learn("digits", *TASKS[2])
    folder = after.folder(third)
    refs = read_manifest(folder).references
    assert [(r["index"], r["task"]) for _, r in sorted(refs.items()) if r["kind"] == KIND] == \
        [(0, "t1"), (1, "t2"), (2, "t3")]  # fmt: skip
    suite, _ = read_suite(folder, refs, after.store.content_path)
    parent = bytes_to_arrays((after.folder(old[1]) / EVAL_FILE).read_bytes())
    n = len(parent["x"])
    assert suite["x"][:n].tobytes() == parent["x"].tobytes() and (suite["task"][:n] == parent["task"]).all()
    assert set(suite["task"][n:].tolist()) == {"t3"}
    # the old versions still serve as before, beside the new one
    assert after.predict("digits", 1, (0, 1)) == answers
    assert len(after.predict("digits", 2, (2, 3))) == 6 and len(after.predict("digits", 3, (4, 5))) == 6
    learner, _ = load_bundle(after.folder(old[0]))  # and load (rollback, retraining from them)
    assert learner.labels == ["0", "1"]

