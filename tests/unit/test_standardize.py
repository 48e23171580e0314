"""What the first trained layer reads is standardised when it is features or vectors (model_core.networks.standardize)."""

from __future__ import annotations

from pathlib import Path

import torch

from model_core.checkpoint import load_bundle, save_bundle
from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.data import Experience, SplitBenchmark
from model_core.export import export_head, export_onnx
from model_core.learner import Learner
from model_core.networks.backbones import MLP
from model_core.networks.standardize import fit_standardization, is_fitted
from tests.conftest import FAST, digit_spec

STEPS = TrainConfig(iterations=150, batch_size=32, device="cpu")


def _embeddings(n: int, seed: int, scale: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four classes of 16-value vectors spread ``scale`` around a shared offset, as unit sentence embeddings are:
    (train x, train y, test x) with the test samples drawn from the same classes."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=gen)
    offset = torch.randn(16, generator=gen) * 3

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(4).repeat_interleave(k)
        return offset + scale * (centres[y] + 1.5 * torch.randn(len(y), 16, generator=gen)), y

    x, y = draw(n)
    test, _ = draw(50)
    return x, y, test


def test_fit_standardization_gives_each_dimension_mean_0_and_spread_1_and_floors_constant_ones() -> None:
    x = torch.randn(500, 3) * torch.tensor([0.05, 3.0, 0.0]) + torch.tensor([1.0, -2.0, 7.0])
    mean, scale = fit_standardization(x)
    z = (x - mean) / scale
    assert torch.allclose(z[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z[:, :2].std(0, correction=0), torch.ones(2), atol=1e-4)
    assert torch.isfinite(z).all() and float(scale[2]) > 0  # a constant dimension is divided by the floor
    assert not is_fitted(torch.zeros(3), torch.ones(3)) and is_fitted(mean, scale)


def test_a_gradient_job_on_features_learns_the_same_whatever_their_scale_and_offset() -> None:
    """The head on an ``identity`` classifier trained by ``joint`` predicts the same labels when every input is
    scaled by 20 and shifted (its standardisation absorbs both), and a closed-form head leaves the buffers alone."""
    x, y, test = _embeddings(60, seed=0)
    spec = NetworkSpec(InputSpec("vector", dim=16), backbone="identity")
    predicted = []
    for a, b in ((1.0, 0.0), (20.0, -5.0)):
        learner = Learner.create(spec, seed=0)
        learner.learn(Experience("t", a * x + b, y, ("a", "b", "c", "d")), "joint", {}, STEPS)
        assert is_fitted(learner.model.feature_mean, learner.model.feature_scale)
        predicted.append(learner.predict(a * test + b, device="cpu"))
    same = sum(p == q for p, q in zip(*predicted, strict=True)) / len(test)
    assert same >= 0.98
    closed = Learner.create(spec, seed=0)
    closed.learn(Experience("t", x, y, ("a", "b", "c", "d")), "analytic", {}, FAST)
    assert not is_fitted(closed.model.feature_mean, closed.model.feature_scale)


def test_standardised_inputs_train_a_small_scale_vector_stream_that_raw_inputs_leave_behind() -> None:
    """The same budget on vectors spread 0.05 around an offset: the standardised MLP fits them (>= 0.8 on new
    samples: 0.87); an MLP made to read them raw (its buffers reset to the no-op after the fit) is clearly worse."""
    x, y, test = _embeddings(60, seed=1)
    ty = torch.arange(4).repeat_interleave(50)
    spec = NetworkSpec(InputSpec("vector", dim=16))
    acc = {}
    for raw in (False, True):
        learner = Learner.create(spec, seed=0)
        if raw:  # fit nothing: mark the buffers as fitted with the no-op values
            learner.model.backbone.in_scale[0] = 1.0 + 1e-7  # type: ignore[index,operator]
        learner.learn(Experience("t", x, y, ("a", "b", "c", "d")), "joint", {}, STEPS)
        pred = learner.predict(test, device="cpu")
        acc[raw] = sum(p == "abcd"[int(t)] for p, t in zip(pred, ty, strict=True)) / len(ty)
    assert acc[False] >= 0.8 and acc[False] > acc[True] + 0.05  # measured: 0.87 against 0.77


def test_the_statistics_are_fitted_once_on_the_first_gradient_job_and_kept(tmp_path: Path) -> None:
    x, y, test = _embeddings(40, seed=2)
    spec = NetworkSpec(InputSpec("vector", dim=16))
    learner = Learner.create(spec, seed=0)
    learner.learn(Experience("t1", x[y < 2], y[y < 2], ("a", "b")), "replay", {}, FAST)
    mlp = learner.model.backbone
    assert isinstance(mlp, MLP) and is_fitted(mlp.in_mean, mlp.in_scale)
    first = mlp.in_mean.clone(), mlp.in_scale.clone()
    learner.learn(Experience("t2", x[y >= 2] * 3, y[y >= 2] - 2, ("c", "d")), "replay", {}, FAST)
    assert torch.equal(mlp.in_mean, first[0]) and torch.equal(mlp.in_scale, first[1])
    save_bundle(tmp_path / "v", learner)
    loaded, _ = load_bundle(tmp_path / "v")
    assert torch.equal(loaded.logits(test, device="cpu"), learner.logits(test, device="cpu"))
    assert export_onnx(loaded, test[:16]).max_abs_diff < 1e-4  # the standardisation is in the graph


def test_pixel_images_trained_from_scratch_are_left_as_they_are(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "joint", {}, FAST)
    mlp = learner.model.backbone
    assert isinstance(mlp, MLP) and not is_fitted(mlp.in_mean, mlp.in_scale)


def test_the_head_graph_folds_the_feature_standardisation_into_its_weights() -> None:
    x, y, test = _embeddings(40, seed=3)
    learner = Learner.create(NetworkSpec(InputSpec("vector", dim=16), backbone="identity"), seed=0)
    learner.learn(Experience("t", x, y, ("a", "b", "c", "d")), "joint", {}, FAST)
    assert is_fitted(learner.model.feature_mean, learner.model.feature_scale)
    assert export_head(learner, test[:16]).max_abs_diff < 1e-4


def test_a_version_saved_before_the_standardisation_loads_as_a_no_op(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "joint", {}, FAST)
    old = {k: v for k, v in learner.model.state_dict().items()
           if not k.endswith(("in_mean", "in_scale", "feature_mean", "feature_scale"))}  # fmt: skip
    fresh = Learner.create(digit_spec(), seed=1)
    fresh.model.expand_head(2)
    fresh.model.load_state_dict(old)
    x = digits.test[0].x
    assert torch.equal(fresh.logits(x, device="cpu"), learner.logits(x, device="cpu"))


def test_an_analytic_head_solved_on_the_features_serves_the_same_logits_over_fitted_statistics() -> None:
    """A ridge block written into a classifier whose plain blocks read standardised features (an earlier
    gradient job fitted them) is expressed in those coordinates: the logits are those of the ridge itself."""
    x, y, test = _embeddings(40, seed=4)
    spec = NetworkSpec(InputSpec("vector", dim=16), backbone="identity")
    exp = Experience("t", x, y, ("a", "b", "c", "d"))
    plain, standardised = Learner.create(spec), Learner.create(spec)
    mean, scale = fit_standardization(x)
    standardised.model.feature_mean.copy_(mean)
    standardised.model.feature_scale.copy_(scale)
    for learner in (plain, standardised):
        learner.learn(exp, "analytic", {"features": "input"}, FAST)
    want, got = plain.logits(test, device="cpu"), standardised.logits(test, device="cpu")
    assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()))
