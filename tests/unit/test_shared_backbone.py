"""One frozen backbone per process (docs/guides/shared-backbone.md): a version's own graph is its head, run on
features a shared backbone session computes once per batch; the cache of inactive versions is bounded by bytes;
the polling worker is woken by a ring when a job is queued."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from model_core.checkpoint import load_bundle, read_manifest, save_bundle
from model_core.data import SplitBenchmark
from model_core.export import PARITY_TOLERANCE, export_head, export_onnx
from model_core.export_frozen import backbone_digest, reads_raw_input
from model_core.learner import Learner
from service.inference.batching import MicroBatcher
from service.inference.inputs import parse_items
from service.inference.sessions import BackbonePool, ServingOptions, ServingState, load_served
from service.persistence.notify import JobBell, ring
from service.storage.files import FileArtifactStore
from tests.conftest import FAST, digit_spec


def png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image[0], 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


OPTIONS = ServingOptions(threads=1, max_batch=16, max_wait=0.0, max_image_pixels=10**6)
NETWORK = {"input": {"kind": "image", "channels": 1, "height": 8, "width": 8}, "scenario": "class-incremental"}


def frozen_learner(digits: SplitBenchmark, tasks: int, strategy: str = "analytic", seed: int = 0) -> Learner:
    learner = Learner.create(digit_spec(), seed=seed)
    learner.model.backbone.requires_grad_(False)  # a frozen backbone, as a pretrained one is
    for exp in digits.train[:tasks]:
        learner.learn(exp, strategy, None, FAST)
    return learner


def write_version(store: FileArtifactStore, learner: Learner, name: str, x: torch.Tensor) -> Path:
    """What the worker writes: the backbone once in the store's content, the head in the version's folder."""
    exported = export_head(learner, x, cache_dir=store.root / "cache")
    sha = store.put_content(exported.backbone)
    folder = store.bundle_dir("c", name)
    save_bundle(folder, learner, extra_files={"head.onnx": exported.head},
                references={"backbone": {"sha256": sha, "size": len(exported.backbone), "kind": "onnx-backbone",
                                         "digest": exported.backbone_digest}})  # fmt: skip
    return folder


def test_a_version_holds_its_head_only_and_serves_what_torch_computes(digits: SplitBenchmark, tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "store")
    x = digits.test[0].x[:32]
    first, second = frozen_learner(digits, 1), frozen_learner(digits, 2, "class_models")
    assert backbone_digest(first) == backbone_digest(second)  # same spec and seed: the same frozen backbone
    folders = [write_version(store, first, "j1", x), write_version(store, second, "j2", x)]
    content = list((store.root / "content" / "sha256").iterdir())
    assert len(content) == 1  # stored once for both versions
    for folder in folders:
        manifest = read_manifest(folder)
        assert manifest.references["backbone"]["sha256"] == content[0].name
        assert set(manifest.files) == {"model.safetensors", "state.pt", "head.onnx"}
        head = onnx.load(str(folder / "head.onnx"))
        assert [i.name for i in head.graph.input] == ["features"]
        assert not {n.op_type for n in head.graph.node} & {"Conv", "Relu", "MaxPool"}  # no backbone node
        assert load_bundle(folder)[0].labels  # the learner loads from the version's own files

    pool = BackbonePool()
    served = [load_served("c", i + 1, f, NETWORK, OPTIONS, pool, store.content_path) for i, f in enumerate(folders)]
    assert len(pool.all()) == 1 and served[0].backbone == served[1].backbone == content[0].name

    items = [{"image_b64": png(img)} for img in x[:5].numpy()]
    decoded = torch.from_numpy(parse_items(items, served[0].fmt, "inputs", 10**6))

    async def both() -> list[tuple[np.ndarray, int]]:  # concurrent requests to two versions: one backbone run
        return list(await asyncio.gather(*(s.batcher.submit(decoded.numpy()) for s in served)))

    results = asyncio.run(both())
    for (rows, run_rows), learner in zip(results, (first, second), strict=True):
        want = learner.logits(decoded, device="cpu").numpy()
        np.testing.assert_allclose(rows[:, : want.shape[1]], want, atol=PARITY_TOLERANCE, rtol=0)
        assert run_rows == 10  # both requests' rows went through the backbone in one run
    assert pool.all()[0].batcher.stats.requests == 2


def test_class_models_on_the_raw_input_export_without_the_backbone(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, "class_models", None, FAST)
    assert reads_raw_input(learner)
    result = export_onnx(learner, digits.test[0].x[:32])
    graph = onnx.load_from_string(result.onnx).graph
    assert graph.node[0].op_type == "Flatten" and not {n.op_type for n in graph.node} & {"Relu", "Conv"}
    assert result.max_abs_diff <= PARITY_TOLERANCE


class _Fake:
    def __init__(self, classifier: str, version: int, nbytes: int) -> None:
        self.classifier, self.version, self.nbytes = classifier, version, nbytes


def test_the_cache_of_inactive_versions_is_bounded_by_bytes_and_keeps_active_ones() -> None:
    state = ServingState(cache_bytes=100)
    big = _Fake("a", 1, 500)
    state.swap(big)  # type: ignore[arg-type]
    for v in range(2, 12):
        state.remember(_Fake("a", v, 10))  # type: ignore[arg-type]
    assert state.cached("a", 1) is big  # active: kept whatever it costs, and not counted
    assert sorted(v for _, v in state.cached_versions()) == list(range(1, 12))  # ten of 10 bytes fit in 100
    state.remember(_Fake("b", 1, 30))  # type: ignore[arg-type]
    assert state.inactive_bytes() <= 100
    assert state.cached("a", 2) is None and state.cached("a", 3) is None and state.cached("a", 4) is None
    assert state.cached("a", 5) is not None and state.cached("b", 1) is not None
    state.swap(_Fake("a", 11, 10))  # type: ignore[arg-type]  # the old active one becomes an evictable entry
    state.remember(_Fake("a", 12, 10))  # type: ignore[arg-type]
    assert state.cached("a", 1) is None and state.inactive_bytes() <= 100


def test_a_second_stage_maps_each_requests_rows() -> None:
    def finish(payloads: list[Any], rows: list[np.ndarray]) -> list[np.ndarray]:
        return [r * p[0] for p, r in zip(payloads, rows, strict=True)]

    batcher = MicroBatcher(lambda x: x + 1, max_batch=8, finish=finish)

    async def go() -> list[tuple[np.ndarray, int]]:
        return list(await asyncio.gather(batcher.submit([2.0, 3.0]), batcher.submit([10.0])))

    (a, rows_a), (b, rows_b) = asyncio.run(go())
    assert rows_a == rows_b == 3  # one run for both requests
    assert a.tolist() == [6.0, 8.0] and b.tolist() == [110.0]


def test_a_ring_wakes_a_waiting_worker_and_dead_workers_sockets_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    bell = JobBell(folder)
    if bell._sock is None:
        pytest.skip("no Unix datagram sockets here")
    assert bell.wait(0.01) is False  # nobody rang
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(bell.wait(30)))
    t.start()
    ring(folder)
    t.join(30)
    assert woke == [True]
    (folder / "worker-999999999.sock").touch()  # a dead worker's leftover: not a socket anyone listens on
    ring(folder)
    assert not (folder / "worker-999999999.sock").exists()
    bell.close()
    assert not list(folder.iterdir())


def test_the_version_just_used_stays_cached_even_when_it_alone_exceeds_the_bound() -> None:
    state = ServingState(cache_bytes=100)
    state.swap(_Fake("a", 2, 10))  # type: ignore[arg-type]
    big = _Fake("a", 1, 800)  # a whole-graph version from before, pinned
    state.remember(big)  # type: ignore[arg-type]
    assert state.cached("a", 1) is big
    state.remember(_Fake("b", 1, 5))  # type: ignore[arg-type]
    assert state.cached("a", 1) is None and state.inactive_bytes() <= 100
