from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_core.data import SplitBenchmark
from model_core.export import PARITY_TOLERANCE, ExportError, export_onnx
from model_core.learner import Learner
from tests.conftest import FAST, digit_spec


# imm rewrites the weights after training (agem and gem only edit gradients); none changes the network's structure
@pytest.mark.parametrize(("backbone", "scenario", "strategy"), [
    ("mlp", "class-incremental", "naive"), ("cnn", "task-incremental", "naive"), ("mlp", "task-incremental", "imm")])  # fmt: skip
def test_onnx_matches_torch_with_a_dynamic_batch(backbone: str, scenario: str, strategy: str, digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(scenario, backbone), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, strategy, None, FAST)
    result = export_onnx(learner, digits.test[0].x[:32])
    assert result.max_abs_diff <= PARITY_TOLERANCE
    session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
    for n in (1, 7, 64):
        x = digits.test[1].x[:n]
        got = session.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == (n, 4)
        np.testing.assert_allclose(got, learner.logits(x, device="cpu").numpy(), atol=PARITY_TOLERANCE)
    meta = {p.key: p.value for p in onnx.load_from_string(result.onnx).metadata_props}
    assert json.loads(meta["engram.labels"]) == ["0", "1", "2", "3"]
    assert [t["name"] for t in json.loads(meta["engram.tasks"])] == ["task1", "task2"]


def test_export_refuses_a_model_without_classes() -> None:
    with pytest.raises(ExportError, match="no classes"):
        export_onnx(Learner.create(digit_spec()))


def test_parity_check_catches_a_mismatch(digits: SplitBenchmark) -> None:
    from model_core.export import parity

    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "naive", None, FAST)
    good = export_onnx(learner).onnx
    with torch.no_grad():
        learner.model.heads[0].bias.add_(1.0)  # type: ignore[operator]
    assert parity(learner, good, digits.test[0].x) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("backbone", ["mlp", "cnn"])
def test_a_trained_network_is_traced_and_torch_export_is_the_fallback(
    backbone: str, digits: SplitBenchmark, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TorchScript tracer writes a trainable network's graph (milliseconds, where torch.export takes seconds
    of a small job); where it fails, torch.export writes it, and either graph passes the same parity check."""
    learner = Learner.create(digit_spec("class-incremental", backbone), seed=0)
    learner.learn(digits.train[0], "naive", None, FAST)
    real, calls, fail = torch.onnx.export, [], [False]

    def recording(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["dynamo"])
        if not kwargs["dynamo"] and fail[0]:
            raise RuntimeError("the tracer cannot follow this network")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", recording)
    graphs = []
    for failing in (False, True):
        calls.clear()
        fail[0] = failing
        result = export_onnx(learner, digits.test[0].x[:32])
        assert calls == ([False, True] if failing else [False])
        assert result.max_abs_diff <= PARITY_TOLERANCE
        session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
        x = digits.test[1].x[:5]
        graphs.append(session.run(["logits"], {"input": x.numpy()})[0])
        assert graphs[-1].shape == (5, 2)
    np.testing.assert_allclose(graphs[0], graphs[1], atol=PARITY_TOLERANCE)
