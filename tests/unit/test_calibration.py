"""The served score's temperature: fitted on held-out samples only, folded into the graph, argmax untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_core.calibration import expected_calibration_error, fit_temperature, top_scores
from model_core.data import SplitBenchmark
from model_core.learner import Learner
from tests.conftest import FAST, digit_spec


def test_the_fitted_temperature_recovers_the_one_that_drew_the_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 5, generator=gen) * 3
    for true_t in (0.2, 1.0, 4.0):
        y = torch.multinomial(torch.softmax(logits / true_t, 1), 1, generator=gen).flatten()
        assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.05)


def test_expected_calibration_error_on_known_cases() -> None:
    assert expected_calibration_error(np.full(100, 0.9), np.arange(100) < 50) == pytest.approx(0.4)
    assert expected_calibration_error(np.full(100, 0.75), np.arange(100) < 75) == pytest.approx(0.0)
    both = np.concatenate([np.full(50, 0.95), np.full(50, 0.55)])
    right = np.concatenate([np.arange(50) < 45, np.arange(50) < 30])  # 0.9 and 0.6 right
    assert expected_calibration_error(both, right) == pytest.approx(0.05)


def test_calibration_is_fitted_on_the_held_out_samples_only_and_served_in_the_graph(
    digits: SplitBenchmark,
) -> None:
    """The temperature a learner takes is the one that fits the samples it is given (held out from training),
    not the one that fits what it trained on; it leaves every prediction as it was, and the exported graph serves
    the scaled logits."""
    from model_core.export import export_onnx

    learner = Learner.create(digit_spec(backbone="identity"))
    for exp in digits.train:
        learner.learn(exp, "analytic", None, FAST)
    held_x = torch.cat([t.x for t in digits.test])
    held_y = [lab for t in digits.test for lab in t.labels]
    train_x = torch.cat([t.x for t in digits.train])
    train_y = [lab for t in digits.train for lab in t.labels]
    index = {name: u for u, name in enumerate(learner.labels)}
    raw_held, raw_train = learner.logits(held_x), learner.logits(train_x)
    predicted = learner.predict(held_x)

    report = learner.calibrate(held_x, held_y)
    t_held = fit_temperature(raw_held, torch.tensor([index[y] for y in held_y]))
    t_train = fit_temperature(raw_train, torch.tensor([index[y] for y in train_y]))
    assert report["temperature"] == pytest.approx(t_held, rel=1e-5)
    assert abs(t_held - t_train) > 0.05 * t_held  # the training samples would have given another temperature
    assert float(learner.model.logit_scale) == pytest.approx(1 / t_held, rel=1e-5)
    assert learner.predict(held_x) == predicted  # a temperature never changes the argmax
    assert report["ece"] < 0.05 < report["ece_before"]
    assert torch.allclose(learner.logits(held_x), raw_held / t_held, rtol=1e-5, atol=1e-6)

    graph = export_onnx(learner, held_x[:64])
    import onnxruntime as ort

    served = ort.InferenceSession(graph.onnx, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": held_x.numpy()})[0]  # fmt: skip
    y = torch.tensor([index[v] for v in held_y])
    scores, right = top_scores(torch.from_numpy(served), y)
    assert expected_calibration_error(scores, right) < 0.05  # in sample here; out of sample: report["ece"]


def test_held_out_samples_all_right_set_the_scores_by_the_rule_of_succession() -> None:
    """Every held-out sample right with a margin: any sharpening lowers their NLL, which then has no minimum (the
    search would run to its end and saturate every served score at 1.0). The temperature instead makes the mean
    top score on them (n + 1) / (n + 2), 5 / 6 for 4 samples: under 1, and sharper than flat ridge scores."""
    from model_core.calibration import fit_temperature, top_scores

    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.5, 0.0], [0.0, 2.5]])
    y = torch.tensor([0, 1, 0, 1])
    t = fit_temperature(logits, y)
    assert float(top_scores(logits / t, y)[0].mean()) == pytest.approx(5 / 6, abs=1e-6)
    flat = logits / 20  # a ridge head's nearly flat softmax: sharpened to the same mean
    assert float(top_scores(flat / fit_temperature(flat, y), y)[0].mean()) == pytest.approx(5 / 6, abs=1e-6)
    wrong = torch.tensor([1, 0, 1, 0])  # every one wrong: no temperature, the scores stay as they are
    assert fit_temperature(logits, wrong) == 1.0
    mixed = torch.tensor([0, 1, 1, 1])  # one wrong: a minimum exists, and it softens the scores
    assert fit_temperature(logits, mixed) > 1.0


def test_out_of_fold_answers_count_with_held_out_samples_all_right() -> None:
    """A small new task cross-validated (service.jobs.training_cross_check): its training samples, each scored by a
    fold that never saw it, count with the held-out samples when every held-out one is right, so 4 held-out and 16
    out-of-fold samples all right set the mean top score to 21 / 22, 15 of 16 to 20 / 22; where a held-out sample is
    wrong the held-out NLL decides as before, whatever the evidence. The temperature is still fitted on the
    held-out logits alone: the out-of-fold answers only count."""
    from model_core.calibration import calibration_report, fit_temperature, top_scores

    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.5, 0.0], [0.0, 2.5]])
    y = torch.tensor([0, 1, 0, 1])
    for evidence, target in (((16, 16), 21 / 22), ((15, 16), 20 / 22), ((0, 0), 5 / 6)):
        t = fit_temperature(logits, y, evidence=evidence)
        assert float(top_scores(logits / t, y)[0].mean()) == pytest.approx(target, abs=1e-6)
    mixed = torch.tensor([0, 1, 1, 1])
    assert fit_temperature(logits, mixed, evidence=(16, 16)) == fit_temperature(logits, mixed)
    report = calibration_report(logits, y, evidence=(16, 16))
    assert report["evidence_right"] == 16 and report["evidence_samples"] == 16
    assert "evidence_right" not in calibration_report(logits, y)
