"""ONNX export with a dynamic batch axis, checked against torch with ONNX Runtime."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.learner import Learner

PARITY_TOLERANCE = 1e-4  # max |onnx - torch| over the check batch; above it the export is refused
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


@dataclass(frozen=True)
class ExportResult:
    onnx: bytes
    max_abs_diff: float  # over the parity batch


def serving_metadata(learner: Learner) -> dict[str, str]:
    """What a server needs beside the graph, stored in the ONNX file's metadata_props."""
    return {
        "engram.labels": json.dumps(learner.labels),
        "engram.tasks": json.dumps([{"name": t.name, "units": t.units} for t in learner.tasks]),
        "engram.network": json.dumps(learner.spec.to_dict()),
    }


def export_onnx(
    learner: Learner, check_inputs: torch.Tensor | None = None, seed: int = 0, cache_dir: Path | None = None
) -> ExportResult:
    """Export the classifier to ONNX (input (B, *shape) float32 -> logits (B, U)) and check parity.

    ``check_inputs`` defaults to 16 uniform random inputs; pass real samples when you have them. A frozen
    backbone's graph is exported once and reused from ``cache_dir`` (``model_core.export_frozen``).
    """
    import onnx

    model = learner.model.to("cpu").eval()
    if model.num_units == 0:
        raise ExportError("the classifier has no classes yet; learn something before exporting")
    shape = learner.spec.input.shape
    if learner.frozen_backbone:
        from model_core.export_frozen import export_frozen

        proto = onnx.load_from_string(export_frozen(learner, INPUT_NAME, OUTPUT_NAME, cache_dir))
        return _finish(learner, proto, check_inputs, seed)
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
            verbose=False,
        )
    assert program is not None
    return _finish(learner, program.model_proto, check_inputs, seed)


def _finish(learner: Learner, proto: Any, check_inputs: torch.Tensor | None, seed: int) -> ExportResult:
    """Add the serving metadata to the graph, serialise it and check it against torch."""
    import onnx

    shape = learner.spec.input.shape
    for key, value in serving_metadata(learner).items():
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
    return ExportResult(data, diff)


def parity(learner: Learner, onnx_bytes: bytes, inputs: torch.Tensor) -> float:
    """Max |ONNX Runtime logits - torch logits| on ``inputs`` (run as two batches, to use the dynamic axis)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = inputs.float().numpy()
    half = max(1, len(x) // 2)
    got = np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: part})[0] for part in (x[:half], x[half:]) if len(part)]
    )
    want = learner.logits(inputs.float(), device="cpu").numpy()
    return float(np.max(np.abs(got - want)))
