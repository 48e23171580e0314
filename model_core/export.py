"""ONNX export with a dynamic batch axis, checked against torch with ONNX Runtime."""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.learner import Learner
from model_core.networks.classifier import IncrementalClassifier

PARITY_TOLERANCE = 1e-4  # max |onnx - torch| over the check batch; above it the export is refused
INPUT_NAME, OUTPUT_NAME, NOVELTY_NAME = "input", "logits", "novelty"
TRACE_OPSET = 20  # the traced graphs' opset: the one torch.export wrote for the same networks
log = logging.getLogger("engram.export")


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


class NoveltyExportError(ExportError):
    """The classifier's graph is right but its novelty output does not reproduce torch's."""


@dataclass(frozen=True)
class Novelty:
    """A version's novelty score (``model_core.novelty``) and its calibrated threshold, exported with it."""

    module: torch.nn.Module
    threshold: float
    known_rate: float

    def metadata(self) -> str:
        return json.dumps({"kind": str(getattr(self.module, "kind", "")), "threshold": self.threshold,
                           "known_rate": self.known_rate})  # fmt: skip


class _WithNovelty(torch.nn.Module):
    """(B, *shape) -> (logits, novelty): the classifier and its novelty score in one graph."""

    def __init__(self, model: IncrementalClassifier, novelty: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.novelty = model, novelty

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        logits = self.model.served(self.model(x))  # the classifier's own forward, whatever its heads read
        return logits, self.novelty(features, x, logits)


class _Served(torch.nn.Module):
    """(B, *shape) -> the served logits: the classifier's forward times its calibration scale."""

    def __init__(self, model: IncrementalClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.served(self.model(x))


@dataclass(frozen=True)
class ExportResult:
    onnx: bytes
    max_abs_diff: float  # over the parity batch


def serving_metadata(learner: Learner, novelty: Novelty | None = None) -> dict[str, str]:
    """What a server needs beside the graph, stored in the ONNX file's metadata_props."""
    meta = {
        "engram.labels": json.dumps(learner.labels),
        "engram.tasks": json.dumps([{"name": t.name, "units": t.units} for t in learner.tasks]),
        "engram.network": json.dumps(learner.spec.to_dict()),
    }
    if novelty is not None:
        meta["engram.novelty"] = novelty.metadata()
    return meta


def export_onnx(
    learner: Learner,
    check_inputs: torch.Tensor | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    novelty: Novelty | None = None,
) -> ExportResult:
    """Export the classifier to ONNX (input (B, *shape) float32 -> logits (B, U)) and check parity.

    ``check_inputs`` defaults to 16 uniform random inputs; pass real samples when you have them. A frozen
    backbone's graph is exported once and reused from ``cache_dir`` (``model_core.export_frozen``). With
    ``novelty``, the graph has a second output ``novelty`` (B,), checked too, and its threshold in the metadata.
    """
    import onnx

    model = learner.model.to("cpu").eval()
    if model.num_units == 0:
        raise ExportError("the classifier has no classes yet; learn something before exporting")
    shape = learner.spec.input.shape
    from model_core.export_frozen import raw_input_model, reads_raw_input

    if reads_raw_input(learner):  # written directly: no backbone in the graph, nothing to trace
        return _finish(learner, raw_input_model(learner, INPUT_NAME, OUTPUT_NAME, novelty.module if novelty else None),
                       check_inputs, seed, novelty)  # fmt: skip
    if learner.frozen_backbone:
        from model_core.export_frozen import export_frozen

        graph = export_frozen(learner, INPUT_NAME, OUTPUT_NAME, cache_dir, novelty.module if novelty else None)
        return _finish(learner, onnx.load_from_string(graph), check_inputs, seed, novelty)
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(seed))
    module = _Served(model) if novelty is None else _WithNovelty(model, novelty.module.eval())
    outputs = [OUTPUT_NAME] if novelty is None else [OUTPUT_NAME, NOVELTY_NAME]
    return _finish(learner, _trace(module, example, outputs), check_inputs, seed, novelty)


def _trace(module: torch.nn.Module, example: torch.Tensor, outputs: list[str]) -> Any:
    """``module``'s ONNX graph, its batch axis dynamic: traced by torch's TorchScript exporter (a job's export stage
    0.05-0.07 s with its parity check, where ``torch.export`` made it 1.8-2.1 s on 2 cores, most of a small job's
    time: ``python -m benchmarks.learn_speed --tasks 3 --strategy ewc``, docs/benchmarks/learning-speed.md), with
    ``torch.export`` (``dynamo=True``) where tracing fails or a torch release has removed it. Either graph is
    checked against torch before it is kept (``_finish``)."""
    import onnx

    batch = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation chatter
        try:
            buf = io.BytesIO()
            torch.onnx.export(module, (example,), buf, dynamo=False,  # type: ignore[arg-type]  # it takes a file object
                              input_names=[INPUT_NAME], output_names=outputs, dynamic_axes=batch,
                              opset_version=TRACE_OPSET)  # fmt: skip
            return onnx.load_from_string(buf.getvalue())
        except Exception:  # any failure of the tracer: the other exporter decides
            log.info("the TorchScript exporter failed; exporting with torch.export", exc_info=True)
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},), verbose=False,
        )  # fmt: skip
    assert program is not None
    return program.model_proto


@dataclass(frozen=True)
class HeadExport:
    """A frozen-backbone version's own graph and the shared one it needs (``export_head``)."""

    head: bytes  # features (B, feature_dim) -> logits (B, U) (and novelty (B,)), with the serving metadata
    backbone: bytes  # input (B, *shape) -> features: the same bytes for every version on this backbone
    backbone_digest: str  # model_core.export_frozen.backbone_digest: the spec and weights it was exported from
    max_abs_diff: float  # the head's logits, ONNX Runtime against torch, on the check batch's features


def export_head(
    learner: Learner,
    check_inputs: torch.Tensor | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    novelty: Novelty | None = None,
) -> HeadExport:
    """A frozen-backbone classifier as two graphs: the backbone's (exported once, from ``cache_dir`` after that)
    and the head's, written directly (milliseconds). The head is checked against torch on the check batch's
    features (the ones the learner trains on: ``Learner.features``); the backbone is the very graph those
    features came from when the worker computes them with ONNX Runtime (``OnnxFeatures``)."""
    import onnx

    from model_core.export_frozen import backbone_digest, backbone_graph, backbone_opset, head_model

    if not learner.frozen_backbone:
        raise ValueError("only a frozen backbone is shared between versions")
    if learner.model.num_units == 0:
        raise ExportError("the classifier has no classes yet; learn something before exporting")
    backbone = backbone_graph(learner, INPUT_NAME, cache_dir)
    proto = onnx.load_from_string(backbone)
    head = head_model(learner, OUTPUT_NAME, novelty.module if novelty else None, opset=backbone_opset(proto),
                      ir_version=proto.ir_version, opset_imports=list(proto.opset_import))  # fmt: skip
    del proto
    meta = serving_metadata(learner, novelty)
    for key, value in meta.items():
        entry = head.metadata_props.add()
        entry.key, entry.value = key, value
    data = head.SerializeToString()
    if check_inputs is None:
        check_inputs = torch.rand(16, *learner.spec.input.shape, generator=torch.Generator().manual_seed(seed + 1))
    x = check_inputs.float()
    feats = learner.features(x)
    diff = head_parity(learner, data, feats)
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX head output differs from torch by {diff:.3g} (> {PARITY_TOLERANCE})")
    if novelty is not None:
        off = novelty_parity(learner, novelty, data, x, feats)
        if not off <= PARITY_TOLERANCE:
            raise NoveltyExportError(f"ONNX novelty differs from torch by {off:.3g} relative (> {PARITY_TOLERANCE})")
    return HeadExport(data, backbone, backbone_digest(learner), diff)


def head_parity(learner: Learner, onnx_bytes: bytes, features: torch.Tensor) -> float:
    """Max |ONNX Runtime logits - torch logits| of the head graph on ``features`` (the served logits, with the
    calibration scale, over that scale where it enlarges them: as ``parity``)."""
    import onnxruntime as ort

    from model_core.graphs import FEATURES

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {FEATURES: features.float().numpy()})[0]
    with torch.no_grad():
        model = learner.model.to("cpu").eval()
        want = model.served(model.forward_head(features.float())).float().numpy()
    return float(np.max(np.abs(got - want))) / max(1.0, float(learner.model.logit_scale)) if len(got) else 0.0


def _finish(
    learner: Learner, proto: Any, check_inputs: torch.Tensor | None, seed: int, novelty: Novelty | None = None
) -> ExportResult:
    """Add the serving metadata to the graph, serialise it and check it against torch."""
    import onnx

    shape = learner.spec.input.shape
    for key, value in serving_metadata(learner, novelty).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    data = buf.getvalue()
    if check_inputs is None:
        check_inputs = torch.rand(16, *shape, generator=torch.Generator().manual_seed(seed + 1))
    diff = parity(learner, data, check_inputs)
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX output differs from torch by {diff:.3g} (> {PARITY_TOLERANCE})")
    if novelty is not None:
        off = novelty_parity(learner, novelty, data, check_inputs)
        if not off <= PARITY_TOLERANCE:
            raise NoveltyExportError(f"ONNX novelty differs from torch by {off:.3g} relative (> {PARITY_TOLERANCE})")
    return ExportResult(data, diff)


def parity(learner: Learner, onnx_bytes: bytes, inputs: torch.Tensor) -> float:
    """Max |ONNX Runtime logits - torch logits| on ``inputs`` (run as two batches, to use the dynamic axis), over
    the calibration scale where it enlarges the logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = inputs.float().numpy()
    half = max(1, len(x) // 2)
    got = np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: part})[0] for part in (x[:half], x[half:]) if len(part)]
    )
    want = learner.logits(inputs.float(), device="cpu").numpy()
    # the calibration scale multiplies both sides alike after the head: the tolerance is for the head's own logits
    # (a ridge head's, near 0 and 1, get scaled by tens, and their float32 rounding with them)
    return float(np.max(np.abs(got - want))) / max(1.0, float(learner.model.logit_scale))


def novelty_parity(
    learner: Learner, novelty: Novelty, onnx_bytes: bytes, inputs: torch.Tensor, features: torch.Tensor | None = None
) -> float:
    """Max |ONNX novelty - torch novelty| / max(1, |torch novelty|) on ``inputs``: the scores are sums of many
    large terms (a log-likelihood over 784 pixels), so their float32 rounding scales with them. With
    ``features``, ``onnx_bytes`` is a head graph that reads them (``export_head``)."""
    import onnxruntime as ort

    from model_core.graphs import FEATURES
    from model_core.novelty import novelty_scores

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: inputs.float().numpy()} if features is None else {FEATURES: features.float().numpy()}
    got = session.run([NOVELTY_NAME], feed)[0]
    want = novelty_scores(learner, inputs.float(), novelty.module)
    assert want is not None
    w = want.double().numpy()
    return float(np.max(np.abs(got.astype(np.float64) - w) / np.maximum(1.0, np.abs(w))))
