"""The int8 backbone in jobs and serving (service.jobs.int8, docs/guides/int8-backbone.md): a classifier's first
job quantizes its frozen backbone on its own samples and stores the graph once by sha256; each version's check
runs its head on both graphs' features; a version whose int8 graph disagrees beyond the tolerance serves fp32;
the setting turns int8 off in serving; the quantization digest changes with its config.

Cheap: the digits' small frozen backbone (8x8 grey inputs), not the photo backbone, so nothing here needs the
weights package; a quantization takes about a second.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from model_core.checkpoint import read_manifest, save_bundle
from model_core.data import SplitBenchmark
from model_core.export import export_head
from model_core.learner import Learner
from model_core.quantize import SIMULATE_QDQ, Int8Kernels, QuantConfig, quantization_digest
from service.inference.sessions import BackbonePool, ServingOptions, load_served, served_backbone
from service.jobs.int8 import INT8, Int8Backbone, Int8Tolerance, check_version, int8_features, plan_int8
from service.jobs.training import FEATURE_SESSIONS, JobRunner, predictions, task_slices
from service.settings import Settings
from service.storage.files import FileArtifactStore
from tests.conftest import FAST, digit_spec

pytestmark = pytest.mark.timeout(600)
OPTIONS = ServingOptions(threads=1, max_batch=8, max_wait=0.0, max_image_pixels=10**6)
NETWORK = {"input": {"kind": "image", "channels": 1, "height": 8, "width": 8}, "scenario": "class-incremental"}
GENEROUS = Int8Tolerance(max_accuracy_drop=1.0, max_disagreement=1.0)  # int8 serves whatever it computes


def frozen_learner(digits: SplitBenchmark) -> Learner:
    learner = Learner.create(digit_spec(), seed=0)
    learner.model.backbone.requires_grad_(False)  # a frozen backbone, as a pretrained one is
    learner.learn(digits.train[0], "analytic", None, FAST)
    return learner


def suite_of(digits: SplitBenchmark) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    test = digits.test[0]
    labels = np.array([test.classes[int(i)] for i in test.y], dtype=str)
    suite = {"x": test.x.numpy(), "label": labels, "task": np.array([test.task] * len(labels), dtype=str)}
    return task_slices(suite, [test.task])


def checked(learner: Learner, int8: Int8Backbone, digits: SplitBenchmark, tolerance: Int8Tolerance) -> dict[str, object]:
    """The job's check: the learner's head on the int8 graph's features and on fp32's (torch's here)."""
    units = len(learner.labels)
    fp32 = (learner.feature_fn, learner.feature_cache)
    learner.feature_fn, learner.feature_cache = int8_features(learner, int8), {}
    try:
        check = check_version(learner, suite_of(digits), lambda lr, x, y, t: predictions(lr, x, y, t, units).after,
                              fp32, tolerance)  # fmt: skip
    finally:
        learner.feature_fn, learner.feature_cache = fp32
    int8.check = check
    return check


def write_version(store: FileArtifactStore, learner: Learner, int8: Int8Backbone, name: str, x: np.ndarray) -> Path:
    """What the worker writes: both backbone graphs once in the store's content, the head in the version's folder."""
    import torch

    exported = export_head(learner, torch.from_numpy(x), cache_dir=store.root / "cache")
    sha = store.put_content(exported.backbone)
    assert store.put_content(int8.graph) == int8.sha256
    folder = store.bundle_dir("c", name)
    save_bundle(folder, learner, extra_files={"head.onnx": exported.head},
                references={"backbone": {"sha256": sha, "size": len(exported.backbone), "kind": "onnx-backbone"},
                            INT8: int8.reference()})  # fmt: skip
    return folder


def test_int8_serves_within_the_tolerance_else_fp32_and_the_setting_turns_it_off(
    digits: SplitBenchmark, tmp_path: Path
) -> None:
    store = FileArtifactStore(tmp_path / "store")
    learner = frozen_learner(digits)
    x = digits.train[0].x.numpy()
    good = plan_int8(learner, None, x, store, tmp_path / "cache")
    broken = plan_int8(learner, None, np.zeros_like(x[:16]), store, tmp_path / "cache")  # black calibration images
    assert good is not None and broken is not None and good.sha256 != broken.sha256
    assert good.quantization["calibration_samples"] == min(len(x), QuantConfig.calibration_samples)

    # within a generous tolerance the good graph serves int8; the broken one disagrees beyond the default one
    ok = checked(learner, good, digits, GENEROUS)
    bad = checked(learner, broken, digits, Int8Tolerance())
    assert ok["serve_int8"] and str(ok["reason"]).startswith("int8 serves")
    assert not bad["serve_int8"] and str(bad["reason"]).startswith("fp32 serves")
    assert float(bad["agreement"]) < 0.95 and float(bad["accuracy_int8"]) < float(bad["accuracy_fp32"])  # type: ignore[arg-type]
    assert set(bad["per_task"]) == {digits.test[0].task}  # type: ignore[arg-type]
    # tolerance 0: int8 serves only if it agrees on every sample, and the report says which
    zero = checked(learner, good, digits, Int8Tolerance(0.0, 0.0))
    assert zero["serve_int8"] == (zero["agreement"] == 1.0)

    pool = BackbonePool()
    served_good = load_served("c", 1, write_version(store, learner, good, "j1", x[:16]), NETWORK, OPTIONS, pool,
                              store.content_path)  # fmt: skip
    served_bad = load_served("c", 2, write_version(store, learner, broken, "j2", x[:16]), NETWORK, OPTIONS, pool,
                             store.content_path)  # fmt: skip
    fp32_sha = read_manifest(tmp_path / "store" / "classifiers" / "c" / "j-j2").references["backbone"]["sha256"]
    assert served_good.backbone == good.sha256  # the int8 graph the check accepted
    assert served_bad.backbone == fp32_sha != broken.sha256  # beyond the tolerance: fp32

    # the setting off: every version serves its fp32 backbone
    off = ServingOptions.from_settings(Settings(int8_backbone=False))
    assert off.int8 is False and ServingOptions.from_settings(Settings()).int8 is Settings().int8_backbone
    refs = read_manifest(tmp_path / "store" / "classifiers" / "c" / "j-j1").references
    assert refs[INT8]["serve"] is True
    assert served_backbone(refs, off)["sha256"] == fp32_sha
    again = load_served("c", 1, tmp_path / "store" / "classifiers" / "c" / "j-j1", NETWORK,
                        dataclasses.replace(OPTIONS, int8=False), BackbonePool(), store.content_path)  # fmt: skip
    assert again.backbone == fp32_sha


def test_a_later_job_learns_from_its_parents_int8_graph_and_one_without_keeps_fp32(
    digits: SplitBenchmark, tmp_path: Path
) -> None:
    store = FileArtifactStore(tmp_path / "store")
    learner = frozen_learner(digits)
    x = digits.train[0].x.numpy()
    first = plan_int8(learner, None, x, store, tmp_path / "cache")
    assert first is not None and first.seconds > 0
    first.check = {"serve_int8": True}
    parent = write_version(store, learner, first, "j1", x[:16])
    inherited = plan_int8(learner, parent, digits.train[1].x.numpy(), store, tmp_path / "cache")
    assert inherited is not None and inherited.graph == first.graph and inherited.quantization == {"inherited": True}
    fp32_parent = store.bundle_dir("c", "j0")
    save_bundle(fp32_parent, learner)  # a version that learned from fp32 (int8 off at its first job)
    assert plan_int8(learner, fp32_parent, x, store, tmp_path / "cache") is None


def test_only_a_reference_that_records_its_fp32_graph_and_settings_is_shared(digits: SplitBenchmark, tmp_path: Path) -> None:
    """A reference written before ``base`` and ``config`` existed, or one naming another fp32 graph, is never taken:
    the first job quantizes its own graph (tests/integration/test_int8_shared.py: the graph that is taken)."""
    store = FileArtifactStore(tmp_path / "store")
    learner = frozen_learner(digits)
    x = digits.train[0].x.numpy()
    first = plan_int8(learner, None, x, store, tmp_path / "cache")
    assert first is not None and first.base and first.config
    store.put_content(first.graph)
    ref = first.reference()
    taken = plan_int8(learner, None, digits.train[1].x.numpy(), store, tmp_path / "cache", shared=[ref])
    assert taken is not None and taken.graph == first.graph and taken.quantization["shared"]
    old = {k: v for k, v in ref.items() if k not in ("base", "config")}
    for other in (old, {**ref, "base": "0" * 64}):
        own = plan_int8(learner, None, digits.train[1].x.numpy(), store, tmp_path / "cache", shared=[other])
        assert own is not None and "shared" not in own.quantization and own.digest != first.digest


def test_a_worker_builds_an_int8_graphs_session_once_and_keeps_few(digits: SplitBenchmark, tmp_path: Path) -> None:
    """Every job after a classifier's first reads the same int8 graph: the worker keeps its session (by the
    graph's sha256) beside the fp32 ones, least recently used out past FEATURE_SESSIONS."""
    learner = frozen_learner(digits)
    store = FileArtifactStore(tmp_path / "store")
    runner = JobRunner(sessions=None, store=store, int8=True)  # type: ignore[arg-type]  # no job runs here
    int8 = plan_int8(learner, None, digits.train[0].x.numpy(), store, tmp_path / "cache")
    assert int8 is not None
    first = runner._int8_session(learner, int8)
    again = runner._int8_session(learner, Int8Backbone(int8.graph, int8.sha256, int8.digest, {"inherited": True}))
    assert again is first
    x = digits.test[0].x[:8]
    assert np.array_equal(again(x).numpy(), int8_features(learner, int8)(x).numpy())
    others = [Int8Backbone(int8.graph, f"{i:064x}", int8.digest, {}) for i in range(FEATURE_SESSIONS)]
    assert all(runner._int8_session(learner, o) is not first for o in others)
    assert len(runner.feature_sessions) == FEATURE_SESSIONS and f"int8:{int8.sha256}" not in runner.feature_sessions


def test_the_digest_covers_the_config_the_calibration_and_onnx_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    graph, images = b"graph", np.zeros((4, 1, 8, 8), np.float32)
    base = quantization_digest(graph, images, QuantConfig())
    assert quantization_digest(graph, images, QuantConfig()) == base
    for changed in (QuantConfig(per_channel=False), QuantConfig(reduce_range=True), QuantConfig(activations="int8"),
                    QuantConfig(calibration_samples=8)):  # fmt: skip
        assert quantization_digest(graph, images, changed) != base
    assert quantization_digest(graph, images + 0.5, QuantConfig()) != base
    assert quantization_digest(b"other", images, QuantConfig()) != base
    monkeypatch.setattr("model_core.quantize._ort_version", lambda: "0.0.0")
    assert quantization_digest(graph, images, QuantConfig()) != base


def test_a_processor_whose_int8_kernels_saturate_serves_fp32_and_learns_from_the_exact_int8_graph(
    digits: SplitBenchmark, tmp_path: Path
) -> None:
    """x86 without VNNI or AMX: serving keeps every version's fp32 backbone (int8 there is slower and its answers
    are not the ones each version's check measured); a job still learns, and checks, on what the int8 graph
    computes, its Q/DQ pairs run in float. The setting leaving parts of the backbone in float is checked."""
    import pydantic

    saturating, exact = Int8Kernels(False, "no VNNI"), Int8Kernels(True, "VNNI")
    on = Settings(int8_backbone=True)
    assert ServingOptions.from_settings(on, saturating).int8 is False
    assert ServingOptions.from_settings(on, exact).int8 is True
    assert ServingOptions.from_settings(Settings(int8_backbone=False), exact).int8 is False
    trusted = ServingOptions.from_settings(Settings(int8_backbone=True, int8_kernels="native"))
    assert trusted.int8 is True and trusted.int8_simulate is False
    simulating = ServingOptions.from_settings(Settings(int8_backbone=True, int8_kernels="simulate"), saturating)
    assert simulating.int8 is True and simulating.int8_simulate is True

    learner = frozen_learner(digits)
    x = digits.train[0].x.numpy()
    int8 = plan_int8(learner, None, x, FileArtifactStore(tmp_path / "store"), tmp_path / "cache")
    assert int8 is not None
    simulated, native = int8_features(learner, int8, saturating), int8_features(learner, int8, exact)
    assert simulated.session.get_session_options().get_session_config_entry(SIMULATE_QDQ) == "1"
    with pytest.raises(RuntimeError, match=SIMULATE_QDQ):  # no such entry: the int8 kernels run
        native.session.get_session_options().get_session_config_entry(SIMULATE_QDQ)
    f = simulated(digits.test[0].x)
    assert f.shape == native(digits.test[0].x).shape and bool(f.isfinite().all())

    # "simulate" serves the int8 graph with its Q/DQ pairs in float; its fp32 backbone stays as it is
    store = FileArtifactStore(tmp_path / "store")
    int8.check = {"serve_int8": True}
    folder = write_version(store, learner, int8, "j1", x[:16])
    pool = BackbonePool()
    served = load_served("c", 1, folder, NETWORK, dataclasses.replace(OPTIONS, int8_simulate=True), pool,
                         store.content_path)  # fmt: skip
    assert served.backbone == int8.sha256
    (backbone,) = pool.all()
    assert backbone.session.get_session_options().get_session_config_entry(SIMULATE_QDQ) == "1"

    assert Settings(int8_float_parts=" depthwise, stem,stem").int8_float_nodes == ("depthwise", "stem")
    assert Settings().int8_float_nodes == ("stem",) == QuantConfig().float_nodes  # the measured default, both ways
    assert Settings(int8_float_parts="").int8_float_nodes == ()  # every part int8
    with pytest.raises(pydantic.ValidationError, match="unknown backbone parts \\['stems'\\]"):
        Settings(int8_float_parts="stems")
