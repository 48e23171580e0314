"""The int8 frozen backbone in a job (docs/guides/int8-backbone.md): quantized once per backbone in a deployment
(or per classifier), learned from, checked against fp32 on every version's evaluation sets, and served only within
the tolerance.

- A classifier's first job (on a frozen, shared backbone, on a CPU, with ``ENGRAM_INT8_BACKBONE`` on) takes the
  int8 graph of another classifier's active version made from the same fp32 graph with the same quantization
  settings (its reference's ``base`` and ``config``), so that a deployment holds one int8 graph per backbone and
  serving one session for it, as for fp32 (``ENGRAM_INT8_CALIBRATION`` "deployment", the default). Where there is
  none (or with "classifier") it quantizes the fp32 backbone graph with ONNX Runtime's own static quantizer
  (``model_core.quantize``), calibrated on the job's own training photos (at most
  ``QuantConfig.calibration_samples``, spread over its classes). The int8 graph goes to the artifact store once,
  by sha256 (``put_content``); the manifest's ``int8`` reference names it, beside the fp32 ``backbone``
  reference, with the quantization digest (fp32 graph, calibration images, every quantization setting and ONNX
  Runtime's version), the fp32 graph's sha256 (``base``) and the digest of the rest (``config``).
- Every later job of the classifier finds the int8 graph through its parent's manifest and computes the
  features it learns from with it: the head is learned from what int8 serving computes. A classifier whose
  first version has no int8 graph (int8 off then, or a version written before) keeps learning from fp32.
- Each version's head is then run on both graphs' features of every task's evaluation samples
  (``model_core.quantize.check_int8``): the report's ``int8`` section gives the top-1 agreement and both
  accuracies, overall and per task, and whether int8 serves and why. ``serve`` in the reference records it;
  serving reads it (``service.inference.sessions.load_served``).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.checkpoint import read_manifest
from model_core.export_frozen import OnnxFeatures, backbone_digest, backbone_graph
from model_core.learner import Learner
from model_core.quantize import (
    INT8_KIND,
    MAX_ACCURACY_DROP,
    MAX_DISAGREEMENT,
    Int8Kernels,
    QuantConfig,
    check_int8,
    config_digest,
    quantize_backbone,
    this_processor,
)
from service.storage.base import ArtifactStore

INT8 = "int8"  # the manifest's reference role of the int8 backbone graph
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Tolerance:
    """The tolerance rule's bounds (``model_core.quantize.check_int8``)."""

    max_accuracy_drop: float = MAX_ACCURACY_DROP
    max_disagreement: float = MAX_DISAGREEMENT


TOLERANCE = Int8Tolerance()


@dataclass
class Int8Backbone:
    """The classifier's int8 backbone graph, as this job uses it."""

    graph: bytes
    sha256: str  # of the graph's bytes: its name in the artifact store's content
    digest: str  # the quantization digest (model_core.quantize.quantization_digest)
    quantization: dict[str, Any]  # how it was made (QuantReport), or which version it came from
    seconds: float = 0.0  # spent quantizing in this job (0 when inherited)
    check: dict[str, Any] | None = field(default=None)  # the version's int8-vs-fp32 check (``check_version``)
    base: str | None = None  # the fp32 graph's sha256 (None: a reference written before it was recorded)
    config: str | None = None  # model_core.quantize.config_digest: what it depends on but its calibration photos

    def reference(self) -> dict[str, Any]:
        """The manifest's ``int8`` reference: the graph by sha256, and whether this version serves it."""
        serve = bool(self.check and self.check.get("serve_int8"))
        ref = {"sha256": self.sha256, "size": len(self.graph), "kind": INT8_KIND, "digest": self.digest,
               "input": "input", "output": "features", "serve": serve}  # fmt: skip
        if self.base and self.config:
            ref.update(base=self.base, config=self.config)
        return ref


def plan_int8(
    learner: Learner,
    parent_dir: Path | None,
    train_x: np.ndarray,
    store: ArtifactStore,
    cache_dir: Path | None,
    config: QuantConfig | None = None,
    shared: Iterable[dict[str, Any]] = (),
) -> Int8Backbone | None:
    """The int8 graph this job learns from: its parent's (from the parent manifest's ``int8`` reference), or, for
    a classifier's first job, one of ``shared`` (other classifiers' ``int8`` references: the first whose fp32 graph
    and quantization settings are this job's, and whose graph the store still holds), else quantized now and
    calibrated on ``train_x`` (the job's training photos, (N, C, H, W) in [0, 1]). None when the parent learned
    from fp32 (int8 is decided at the first version)."""
    if parent_dir is not None:
        ref = read_manifest(parent_dir).references.get(INT8)
        if not ref:
            return None
        graph = store.content_path(str(ref["sha256"])).read_bytes()
        return Int8Backbone(graph, str(ref["sha256"]), str(ref.get("digest")), {"inherited": True},
                            base=ref.get("base"), config=ref.get("config"))  # fmt: skip
    config = config or QuantConfig()
    started = time.perf_counter()
    data = backbone_graph(learner, "input", cache_dir)
    base, settings = hashlib.sha256(data).hexdigest(), config_digest(data, config)
    found = _shared_graph(shared, base, settings, store)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="engram-int8-") as tmp:
        folder = cache_dir if cache_dir is not None else Path(tmp)
        fp32 = folder / f"features-{backbone_digest(learner)}.onnx"  # where backbone_graph caches it
        if not fp32.exists():
            fp32.write_bytes(data)
        report = quantize_backbone(fp32, train_x, folder, config)
        graph = report.path.read_bytes()
    about = {k: v for k, v in report.to_dict().items() if k != "path"}
    return Int8Backbone(graph, hashlib.sha256(graph).hexdigest(), report.digest, about,
                        time.perf_counter() - started, base=base, config=settings)  # fmt: skip


def _shared_graph(refs: Iterable[dict[str, Any]], base: str, settings: str, store: ArtifactStore) -> Int8Backbone | None:
    """The first of ``refs`` made from the fp32 graph ``base`` with the settings ``settings`` whose graph the
    store holds intact (a pruned or damaged one is passed over: the job then quantizes)."""
    for ref in refs:
        if ref.get("base") != base or ref.get("config") != settings:
            continue
        sha = str(ref.get("sha256"))
        try:
            graph = store.content_path(sha).read_bytes()
        except Exception:  # gone (pruned with its classifiers) or unreadable: quantize instead
            log.warning("the int8 graph %s of another classifier cannot be read; quantizing anew", sha[:12])
            continue
        if hashlib.sha256(graph).hexdigest() == sha:
            return Int8Backbone(graph, sha, str(ref.get("digest")), {"shared": True, "config": settings},
                                base=base, config=settings)  # fmt: skip
    return None


def int8_features(learner: Learner, int8: Int8Backbone, kernels: Int8Kernels | None = None) -> OnnxFeatures:
    """The job's feature function on the int8 graph: what serving computes when int8 serves, on any worker. On a
    processor whose int8 kernels saturate (``kernels``, default this one's: ``model_core.quantize.int8_kernels``)
    the graph's Q/DQ pairs run in float, so a head learns, and is checked, on what a processor with exact int8
    kernels serves, never on this one's saturated sums."""
    kernels = kernels or this_processor()
    return OnnxFeatures(learner, None, graph=int8.graph, simulate_qdq=not kernels.exact)


def check_version(
    learner: Learner,
    slices: dict[str, tuple[np.ndarray, np.ndarray]],
    predict: Callable[[Learner, np.ndarray, np.ndarray, str], np.ndarray],
    fp32: tuple[Callable[[torch.Tensor], torch.Tensor], dict[bytes, torch.Tensor]],
    tolerance: Int8Tolerance,
) -> dict[str, Any]:
    """The version's head on both graphs' features of every task's evaluation samples ``slices`` ({task: (x,
    labels)}): ``predict(learner, x, labels, task)`` gives its labels, once with the learner's own (int8) feature
    function and once with ``fp32`` (the fp32 feature function and its cache). Returns the report's ``int8``
    section: the rule's decision and reason, overall and per task."""
    tasks = [t for t, (x, _) in slices.items() if len(x)]
    int8_pred = {t: predict(learner, *slices[t], t) for t in tasks}
    own = learner.feature_fn, learner.feature_cache
    learner.feature_fn, learner.feature_cache = fp32
    try:
        fp32_pred = {t: predict(learner, *slices[t], t) for t in tasks}
    finally:
        learner.feature_fn, learner.feature_cache = own
    if not tasks:
        return {"serve_int8": False, "reason": "fp32 serves: no evaluation samples to check the int8 graph on"}
    labels = np.concatenate([slices[t][1].astype(str) for t in tasks])
    a, b = np.concatenate([fp32_pred[t] for t in tasks]), np.concatenate([int8_pred[t] for t in tasks])
    check = check_int8(labels, a, b, tolerance.max_accuracy_drop, tolerance.max_disagreement).to_dict()
    check["per_task"] = {
        t: {"samples": len(slices[t][1]), "agreement": round(float((fp32_pred[t] == int8_pred[t]).mean()), 4),
            "accuracy_fp32": round(float((fp32_pred[t] == slices[t][1].astype(str)).mean()), 4),
            "accuracy_int8": round(float((int8_pred[t] == slices[t][1].astype(str)).mean()), 4)}
        for t in tasks
    }  # fmt: skip
    return check
