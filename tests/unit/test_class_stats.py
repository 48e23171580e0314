"""Class models from running statistics: exact merges, the shrinkage's two ends, more samples of known classes."""

from __future__ import annotations

import pytest
import torch

from model_core.data import Experience, SplitBenchmark
from model_core.learner import Learner
from model_core.networks.class_gaussians import ClassGaussians
from model_core.networks.class_stats import ClassStats, class_gaussians
from tests.conftest import FAST, digit_spec


def dense_cov(entry: dict[str, torch.Tensor]) -> torch.Tensor:
    """W W^T + s^2 I of a one-component entry, (D, D) float64."""
    w = entry["factors"][0].double()
    return w @ w.T + float(entry["noise"][0]) ** 2 * torch.eye(w.shape[0], dtype=torch.float64)


def blobs(gen: torch.Generator, n: tuple[int, ...] = (300, 40, 15), dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes with their own means and covariances, of unequal sizes: x (N, dim), y (N,)."""
    xs, ys = [], []
    for c, count in enumerate(n):
        mix = torch.randn(dim, dim, generator=gen) * (0.3 + c)
        xs.append(torch.randn(count, dim, generator=gen) @ mix + 3 * c)
        ys.append(torch.full((count,), c))
    return torch.cat(xs), torch.cat(ys)


def test_statistics_merged_in_any_batches_and_order_equal_those_of_all_the_samples_at_once() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = blobs(gen)
    whole = ClassStats(6)
    for c in range(3):
        whole.add(c, x[y == c])
    pieces = ClassStats(6)
    order = torch.randperm(len(y), generator=gen)
    for chunk in order.split(37):  # batches that mix classes, in a shuffled order
        for c in torch.unique(y[chunk]).tolist():
            pieces.add(c, x[chunk][y[chunk] == c])
    for c in range(3):
        assert pieces.count[c] == whole.count[c]
        assert torch.allclose(pieces.mean[c], whole.mean[c], atol=1e-12)
        assert torch.allclose(pieces.scatter[c], whole.scatter[c], rtol=1e-10, atol=1e-9)
    restored = ClassStats.from_state(pieces.state_dict())  # the upper triangle is stored, the matrix restored
    assert torch.equal(restored.scatter[2], pieces.scatter[2])


def test_shrinkage_zero_is_each_class_own_ppca_and_one_is_the_pooled_model() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = blobs(gen, n=(300, 200, 150))
    stats = ClassStats(6)
    for c in range(3):
        stats.add(c, x[y == c])
    rank = 3
    own = class_gaussians(stats, rank, {c: 0.0 for c in range(3)})
    per_class = ClassGaussians(6, components=1, rank=rank, min_samples=2)  # the per-class PPCA on the samples
    for c in range(3):
        per_class.fit_class(c, x[y == c], gen)
        assert torch.allclose(own.classes[c]["means"], per_class.classes[c]["means"], atol=1e-5)
        assert torch.allclose(dense_cov(own.classes[c]), dense_cov(per_class.classes[c]), rtol=1e-4, atol=1e-4)
    q = torch.randn(20, 6, generator=gen) * 3
    assert torch.allclose(own.log_likelihood(q), per_class.log_likelihood(q), rtol=1e-5, atol=1e-4)

    pooled = class_gaussians(stats, rank, {c: 1.0 for c in range(3)})
    centred = torch.cat([x[y == c].double() - x[y == c].double().mean(0) for c in range(3)])
    want = ClassGaussians(6, components=1, rank=rank, min_samples=2)
    want.fit_class(0, centred * ((len(y) - 1) / (len(y) - 3)) ** 0.5, gen)  # N - C degrees of freedom
    for c in range(3):
        assert torch.allclose(dense_cov(pooled.classes[c]), dense_cov(want.classes[0]), rtol=1e-4, atol=1e-4)
    # one shared covariance: linear discriminant analysis, the log-likelihood differences are affine in x
    ll = pooled.log_likelihood(q)
    diff = ll[:, 1] - ll[:, 0]
    design = torch.cat([q.double(), torch.ones(len(q), 1, dtype=torch.float64)], 1)
    fit = torch.linalg.lstsq(design, diff[:, None]).solution
    assert torch.allclose(design @ fit, diff[:, None], atol=1e-6)
    # in between, a class of few samples leans on the pooled shape more than a large one
    assert stats.shrinkage(2, 30.0) > stats.shrinkage(0, 30.0)


def _learner() -> Learner:
    return Learner.create(digit_spec("class-incremental"), seed=0)


def _part(exp: Experience, rows: torch.Tensor, name: str) -> Experience:
    return Experience(name, exp.x[rows], exp.y[rows], exp.classes)


def test_class_models_updated_with_more_samples_equal_those_fitted_on_all_at_once(digits: SplitBenchmark) -> None:
    fixed = {"shrinkage": 0.4, "rank": 16}
    first, second = digits.train[0], digits.train[1]
    half = torch.arange(len(first)) % 2 == 0
    at_once = _learner()
    at_once.learn(first, "class_models", fixed, FAST)
    at_once.learn(second, "class_models", fixed, FAST)
    in_parts = _learner()
    in_parts.learn(_part(first, torch.nonzero(half).flatten(), "a"), "class_models", fixed, FAST)
    # more samples of the known classes 0 and 1, mixed with the new classes 2 and 3 in one batch
    rest = _part(first, torch.nonzero(~half).flatten(), "b")
    mixed = Experience("b", torch.cat([rest.x, second.x]), torch.cat([rest.y, second.y + 2]),
                       (*first.classes, *second.classes))  # fmt: skip
    result = in_parts.learn(mixed, "class_models", fixed, FAST)
    assert result.new_labels == list(second.classes)
    every = torch.cat([first.y, second.y + 2])
    assert result.diagnostics["samples"] == {label: int((every == i).sum()) for i, label in enumerate(at_once.labels)}
    x = torch.cat([t.x for t in digits.test[:2]])
    assert torch.allclose(in_parts.logits(x), at_once.logits(x), rtol=1e-4, atol=1e-3)
    assert torch.equal(in_parts.logits(x).argmax(1), at_once.logits(x).argmax(1))


def test_a_batch_of_drifted_samples_of_a_known_class_is_learnt_and_raises_its_accuracy(
    digits: SplitBenchmark,
) -> None:
    learner = _learner()
    for exp in digits.train[:3]:
        learner.learn(exp, "class_models", None, FAST)

    def drift(x: torch.Tensor) -> torch.Tensor:  # the class's look changes: its strokes shift right and fade
        return torch.roll(x, shifts=2, dims=-1) * 0.6

    train0 = digits.train[0]
    zeros = torch.nonzero(train0.y == 0).flatten()
    test0 = digits.test[0]
    drifted_test = Experience("t0", drift(test0.x[test0.y == 0]), torch.zeros(int((test0.y == 0).sum()),
                                                                              dtype=torch.long), train0.classes)
    before = learner.accuracy(drifted_test)
    plain_before = overall(learner, digits.test[:3])
    batch = Experience("more zeros", drift(train0.x[zeros[:40]]), torch.zeros(40, dtype=torch.long), ("0",))
    result = learner.learn(batch, "class_models", None, FAST)
    assert result.new_labels == [] and result.diagnostics["samples"]["0"] == len(zeros) + 40
    after = learner.accuracy(drifted_test)
    assert after > before + 0.2, (before, after)
    assert overall(learner, digits.test[:3]) >= plain_before - 0.03  # the undrifted classes hold


def overall(learner: Learner, tests: list[Experience]) -> float:
    return sum(learner.accuracy(t) * len(t) for t in tests) / sum(len(t) for t in tests)


def test_class_models_computed_in_the_samples_span_equal_the_full_decomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few samples in many dimensions (3 classes of 27 in 1,280 values, as 80 photos' features): the models
    decomposed in the samples' 78-dimensional span score every input as the full 1,280-wide decompositions do,
    at every shrinkage; many samples get no basis (the full decomposition is no dearer there)."""
    from model_core.networks import class_stats

    gen = torch.Generator().manual_seed(0)
    stats = ClassStats(1280)
    for unit in range(3):
        stats.add(unit, torch.randn(27, 1280, generator=gen) * (1 + unit) + unit)
    basis = class_stats.span_basis(stats)
    assert basis is not None and basis.shape == (1280, 78)
    x = torch.randn(50, 1280, generator=gen)
    for share in (0.0, 0.3, 1.0):
        amounts = dict.fromkeys(stats.units, share)
        in_span = class_gaussians(stats, 16, amounts).log_likelihood(x, 1e-6)
        with monkeypatch.context() as m:
            m.setattr(class_stats, "span_basis", lambda _: None)
            full = class_gaussians(stats, 16, amounts).log_likelihood(x, 1e-6)
        torch.testing.assert_close(in_span, full, rtol=1e-5, atol=1e-3)
    big = ClassStats(8)
    big.add(0, torch.randn(20, 8, generator=gen))
    assert class_stats.span_basis(big) is None
