"""Novelty scores from a version's class models: separation of unknown classes, calibration, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from benchmarks.novelty import auroc
from model_core.data import SplitBenchmark
from model_core.export import Novelty, export_onnx
from model_core.learner import Learner
from model_core.novelty import ambiguity, calibrate, fit_novelty, novelty_module, novelty_scores, sharpness
from tests.conftest import FAST, digit_spec
from tests.unit.support import SMALL

CASES = {  # strategy, frozen backbone -> the score it gets and its AUROC floor on unknown 8x8 digits (seed 0)
    ("class_models", False): ("max_logit", 0.9),
    ("generative_replay", False): ("likelihood", 0.9),
    ("analytic", True): ("mahalanobis", 0.7),
}


def learned(strategy: str, frozen: bool, digits: SplitBenchmark, tasks: int = 2) -> Learner:
    learner = Learner.create(digit_spec(), seed=0)
    if frozen:  # the head then reads the (frozen) backbone's features, as with a pretrained backbone
        learner.model.backbone.requires_grad_(False)
    for exp in digits.train[:tasks]:
        learner.learn(exp, strategy, SMALL.get(strategy), FAST)
    return learner


@pytest.mark.parametrize(("strategy", "frozen"), list(CASES))
def test_unknown_classes_score_above_known_and_onnx_agrees(
    strategy: str, frozen: bool, digits: SplitBenchmark, tmp_path: Path
) -> None:
    kind, floor = CASES[(strategy, frozen)]
    learner = learned(strategy, frozen, digits)
    module = novelty_module(learner)
    assert module is not None and module.kind == kind
    known = torch.cat([t.x for t in digits.test[:2]])
    unknown = torch.cat([t.x for t in digits.test[2:]])
    k, u = novelty_scores(learner, known, module), novelty_scores(learner, unknown, module)
    assert k is not None and u is not None
    assert auroc(k.numpy(), u.numpy()) >= floor

    threshold = fit_novelty(learner, module, known)
    result = export_onnx(learner, known[:32], cache_dir=tmp_path, novelty=Novelty(module, threshold, 0.95))
    session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
    logits, got = session.run(["logits", "novelty"], {"input": unknown[:7].numpy()})
    want = novelty_scores(learner, unknown[:7], module)
    assert want is not None
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, learner.logits(unknown[:7]).numpy(), atol=1e-4, rtol=0)
    meta = session.get_modelmeta().custom_metadata_map
    assert '"threshold": ' + repr(threshold) in meta["engram.novelty"]


@pytest.mark.parametrize("strategy", ["naive", "replay"])
def test_strategies_without_class_models_have_no_novelty(strategy: str, digits: SplitBenchmark) -> None:
    learner = learned(strategy, False, digits, tasks=1)
    assert novelty_module(learner) is None
    assert novelty_scores(learner, digits.test[0].x[:3]) is None


def test_calibrate_keeps_the_asked_share_at_or_below_the_threshold() -> None:
    scores = torch.arange(100, dtype=torch.float32).flip(0)
    assert calibrate(scores, 0.95) == 95.0  # the 96th smallest of 100: ceil(101 * 0.95)
    assert float((scores <= calibrate(scores, 0.8)).double().mean()) == 0.81
    assert calibrate(scores[:10], 0.95) == 99.0  # too few samples for the rate: the largest
    with pytest.raises(ValueError, match="known_rate"):
        calibrate(scores, 0.0)


def test_the_ambiguity_reads_the_logits_at_their_median_top_two_margin(digits: SplitBenchmark) -> None:
    assert sharpness(torch.tensor([[9.0, 1.0, 0.0], [0.0, 4.0, 2.0], [3.0, 3.0, 0.0]])) == 0.5  # margins 8, 2, 0
    assert sharpness(torch.tensor([[5.0], [7.0]])) == 1.0  # one unit: no margin
    assert sharpness(torch.tensor([[1.0, 1.0], [2.0, 2.0]])) == 1.0  # no margin at all
    logits = torch.tensor([[30.0, 10.0, 0.0], [0.0, 25.0, 20.0]])
    assert torch.allclose(ambiguity(logits, 0.1), ambiguity(logits * 0.1))

    learner = learned("class_models", False, digits)
    module = novelty_module(learner)
    assert module is not None
    known = torch.cat([t.x for t in digits.test[:2]])
    fit_novelty(learner, module, known)
    top2 = learner.logits(known).double().topk(2, dim=1).values
    assert float(module.sharpness) == pytest.approx(1.0 / float((top2[:, 0] - top2[:, 1]).median()))


def test_the_mahalanobis_score_on_the_samples_span_equals_the_full_one_and_onnx_agrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fewer samples than features (a photo classifier's first classes: 92 samples, 1,280 features): the score is
    computed on the samples' span plus a multiple of the distance off it (``from_analytic``'s basis), with small
    matrices, and gives the full-dimensional score's values; its ONNX nodes reproduce torch's."""
    import onnx
    from onnx import TensorProto, helper

    from model_core import novelty as nv

    gen = torch.Generator().manual_seed(0)
    n, dim, units = 92, 1280, 3
    h = torch.rand(n, dim, generator=gen, dtype=torch.float64) ** 2
    y = torch.arange(n) % units
    h[:, :8] += 0.5 * y[:, None]  # the classes apart in a few features
    hb = torch.cat([h, torch.ones(n, 1, dtype=torch.float64)], 1)
    state = {"gram": hb.T @ hb, "cross": hb.T @ torch.nn.functional.one_hot(y, units).double()}
    low = nv.from_analytic(state, units)
    assert low is not None and low.basis is not None and low.basis.shape[1] < dim // 2
    with monkeypatch.context() as m:
        m.setattr(nv, "_span", lambda *a: None)
        full = nv.from_analytic(state, units)
    assert full is not None and full.basis is None
    probe = torch.cat([h[:20], torch.rand(20, dim, generator=gen, dtype=torch.float64)]).float()  # known, unknown
    logits = torch.zeros(len(probe), units)
    got, want = low.surprise(probe, probe, logits), full.surprise(probe, probe, logits)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))

    nodes, inits = nv.onnx_nodes(low, "features", "logits", "novelty", 18)
    graph = helper.make_graph(nodes, "novelty", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", dim]),
                                                 helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", units])],
                              [helper.make_tensor_value_info("novelty", TensorProto.FLOAT, ["B"])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    served = session.run(["novelty"], {"features": probe.numpy(), "logits": logits.numpy()})[0]
    np.testing.assert_allclose(served, low(probe, probe, logits).numpy(), rtol=1e-4, atol=1e-4)
    assert len(model.SerializeToString()) < 2_000_000 < 8 * dim * dim  # the full score's two D x D float32 matrices
    assert onnx.checker.check_model(model) is None
