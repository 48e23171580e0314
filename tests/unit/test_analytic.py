"""The analytic head: inputs that are features (``identity``), random features, balance across classes."""

from __future__ import annotations

import pytest
import torch

from model_core.config import BackboneSpec, InputSpec, NetworkSpec
from model_core.data import Experience, SplitBenchmark
from model_core.learner import Learner
from model_core.networks.random_features import ExpandedLinear, RandomFeatures, expansion_of
from model_core.strategies.analytic import Analytic, balanced_sums, class_weighted_sums, random_width, solve_ridge
from model_core.strategy_specs import default_strategy
from tests.conftest import FAST, digit_spec


def _head(learner: Learner) -> torch.Tensor:
    """(U, P+1) every block's weights and bias, float64."""
    return torch.cat([torch.cat([h.weight, h.bias[:, None]], 1) for h in learner.model.heads]).double()


def _sums(h: torch.Tensor, y: torch.Tensor, units: int) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.cat([h.double(), torch.ones(len(h), 1, dtype=torch.float64)], 1)
    return f.T @ f, f.T @ torch.nn.functional.one_hot(y, units).double()


def test_identity_declares_inputs_as_features_and_gets_the_analytic_default() -> None:
    spec = NetworkSpec(InputSpec("vector", dim=12), backbone="identity")
    assert spec.backbone.train == "frozen" and spec.backbone.weights == "none"
    with pytest.raises(ValueError, match="nothing to train"):
        BackboneSpec(name="identity", train="all")
    learner = Learner.create(spec)
    assert learner.frozen_backbone and learner.model.feature_dim == 12
    x = torch.randn(5, 12)
    assert torch.equal(learner.model.forward_features(x), x)  # mean 0, std 1: the features are the input
    assert default_strategy(spec.to_dict()) == "analytic"


def test_random_feature_head_is_the_joint_ridge_on_its_own_features(digits: SplitBenchmark) -> None:
    """One experience: bit for bit the ridge on the projected features; task by task: the same solution (the
    sums are added in another order, so equal to float64 rounding)."""
    params = {"ridge": 1e-3, "balance": "samples"}
    whole = Learner.create(digit_spec(backbone="identity"))
    classes = tuple(c for e in digits.train for c in e.classes)
    every = Experience("all", torch.cat([e.x for e in digits.train]),
                       torch.cat([e.y + 2 * i for i, e in enumerate(digits.train)]), classes)  # fmt: skip
    whole.learn(every, "analytic", params, FAST)
    expansion = expansion_of(whole.model.heads)
    assert isinstance(expansion, RandomFeatures) and expansion.width == random_width(64)
    with torch.no_grad():
        g, c = _sums(expansion(every.x.flatten(1)).double(), every.y, 10)
    joint, _ = solve_ridge(g, c, len(every.x), 1e-3)
    assert torch.equal(_head(whole), joint.T.float().double())

    stepwise = Learner.create(digit_spec(backbone="identity"))
    for exp in digits.train:
        stepwise.learn(exp, "analytic", params, FAST)
    assert all(isinstance(h, ExpandedLinear) for h in stepwise.model.heads)
    assert torch.equal(expansion_of(stepwise.model.heads).weight, expansion.weight)  # type: ignore[union-attr]
    assert torch.allclose(_head(stepwise), _head(whole), atol=1e-5)
    assert min(stepwise.accuracy(t) for t in digits.test) > 0.9  # no task forgotten


def test_balanced_sums_are_a_no_op_on_equal_classes() -> None:
    h = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    g, c = _sums(h, torch.arange(60) % 3, 3)
    gb, cb, n = balanced_sums(g, c)
    assert n == 60 and torch.allclose(gb, g, atol=1e-9) and torch.allclose(cb, c, atol=1e-12)


def test_a_balanced_head_on_unequal_classes_equals_the_one_on_equal_classes_in_expectation() -> None:
    """Two Gaussian classes in 6 dimensions sharing one covariance, 100 and 500 samples (unequal) or 300 and 300
    (equal), 400 seeded draws of each: the mean balanced sums on unequal counts match the mean sums on equal
    counts within 1% of their scale, and the mean balanced heads within 0.01, while the unbalanced ones miss by far
    more (the bigger class takes the intercept)."""
    gen = torch.Generator().manual_seed(0)
    dim, draws = 6, 400
    means = torch.randn(2, dim, generator=gen)
    mix = torch.randn(dim, dim, generator=gen) / dim**0.5

    def draw(counts: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        return means[y] + torch.randn(len(y), dim, generator=gen) @ mix, y

    def fit(counts: tuple[int, int], balance: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = draw(counts)
        g, c = _sums(x, y, 2)
        n = len(y)
        if balance:
            g, c, n = balanced_sums(g, c)
        return g, c, solve_ridge(g, c, n, 1e-3)[0]

    equal = [fit((300, 300), False) for _ in range(draws)]
    balanced = [fit((100, 500), True) for _ in range(draws)]
    plain = [fit((100, 500), False) for _ in range(draws)]

    def mean(runs: list[tuple[torch.Tensor, ...]], i: int) -> torch.Tensor:
        return torch.stack([r[i] for r in runs]).mean(0)

    for i in (0, 1):  # G and C
        scale = mean(equal, i).abs().max()
        assert (mean(balanced, i) - mean(equal, i)).abs().max() < 0.01 * scale
    miss_balanced = (mean(balanced, 2) - mean(equal, 2)).abs().max()
    miss_plain = (mean(plain, 2) - mean(equal, 2)).abs().max()
    assert miss_balanced < 0.01 < miss_plain


def _class_sums(h: torch.Tensor, y: torch.Tensor, units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The class-weighted sums: every sample at 1 / (its class's count)."""
    f = torch.cat([h.double(), torch.ones(len(h), 1, dtype=torch.float64)], 1)
    w = (1.0 / torch.bincount(y, minlength=units).double())[y]
    return (f * w[:, None]).T @ f, (f * w[:, None]).T @ torch.nn.functional.one_hot(y, units).double()


def test_class_weighted_sums_on_unequal_classes_equal_equal_classes_in_expectation_whatever_their_covariance() -> None:
    """Two Gaussian classes in 6 dimensions, each with its own covariance (one 9 times the other's variance), 100
    and 500 samples (unequal) or 300 and 300 (equal), 400 seeded draws of each: the mean class-weighted sums on
    unequal counts match the mean plain sums on equal counts within 2% of their scale, and the mean heads within
    0.01, where the shared-covariance balance (``balanced_sums`` on G and C) misses the Gram matrix by far more
    (its within-class scatter is counted per sample, so the big class's shape dominates it)."""
    gen = torch.Generator().manual_seed(0)
    dim, draws = 6, 400
    means = torch.randn(2, dim, generator=gen)
    mixes = [torch.randn(dim, dim, generator=gen) / dim**0.5 * s for s in (3.0, 1.0)]

    def draw(counts: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        noise = torch.randn(len(y), dim, generator=gen)
        x = torch.stack([noise[i] @ mixes[int(y[i])] for i in range(len(y))])
        return means[y] + x, y

    def fit(counts: tuple[int, int], how: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = draw(counts)
        if how == "classes":
            g, c, n = class_weighted_sums(*_class_sums(x, y, 2), len(y))
        else:
            g, c = _sums(x, y, 2)
            g, c, n = balanced_sums(g, c) if how == "shared" else (g, c, len(y))
        return g, c, solve_ridge(g, c, n, 1e-3)[0]

    equal = [fit((300, 300), "plain") for _ in range(draws)]
    weighted = [fit((100, 500), "classes") for _ in range(draws)]
    shared = [fit((100, 500), "shared") for _ in range(draws)]

    def mean(runs: list[tuple[torch.Tensor, ...]], i: int) -> torch.Tensor:
        return torch.stack([r[i] for r in runs]).mean(0)

    for i in (0, 1):  # G and C
        scale = mean(equal, i).abs().max()
        assert (mean(weighted, i) - mean(equal, i)).abs().max() < 0.02 * scale
    scale = mean(equal, 0).abs().max()
    assert (mean(shared, 0) - mean(equal, 0)).abs().max() > 0.1 * scale
    assert (mean(weighted, 2) - mean(equal, 2)).abs().max() < 0.01


def test_the_balanced_head_is_the_class_weighted_ridge_of_all_samples_learnt_in_any_order() -> None:
    """Two tasks of unequal classes (10 and 30 samples, then 60 and 12), then 5 more samples of the first class:
    the head is the ridge of the class-weighted sums of every sample learnt (each sample at 1 / its class's count
    once its job was in: 1 / 10 for the first 10, 1 / 15 for the last 5; each class's mean then brought back to
    one weight), so a class learnt in one job weighs exactly 1 whatever its count."""
    gen = torch.Generator().manual_seed(3)
    spec = NetworkSpec(InputSpec("vector", dim=5), backbone="identity")
    centres = torch.randn(4, 5, generator=gen)

    def exp(labels: list[int], name: str, classes: tuple[str, ...], offset: int = 0) -> Experience:
        y = torch.tensor(labels)
        return Experience(name, centres[y] + torch.randn(len(y), 5, generator=gen), y - offset, classes)

    jobs = [exp([0] * 10 + [1] * 30, "t0", ("0", "1")), exp([2] * 60 + [3] * 12, "t1", ("2", "3"), 2),
            exp([0] * 5, "more", ("0",))]  # fmt: skip
    learner = Learner.create(spec)
    params = {"features": "input", "ridge": 1e-2}
    for job in jobs:
        learner.learn(job, "analytic", params, FAST)
    x = torch.cat([j.x for j in jobs])
    y = torch.cat([jobs[0].y, jobs[1].y + 2, jobs[2].y])
    w = torch.cat([torch.full((10,), 1 / 10), torch.full((30,), 1 / 30), torch.full((60,), 1 / 60),
                   torch.full((12,), 1 / 12), torch.full((5,), 1 / 15)]).double()  # fmt: skip
    f = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    g, c = (f * w[:, None]).T @ f, (f * w[:, None]).T @ torch.nn.functional.one_hot(y, 4).double()
    want, _ = solve_ridge(*class_weighted_sums(g, c, len(y)), relative=1e-2)
    assert torch.allclose(_head(learner).T, want, atol=1e-5)
    mass = learner.strategy_states["analytic"]["cls_cross"][-1]
    assert torch.allclose(mass, torch.tensor([1 + 5 / 15, 1.0, 1.0, 1.0], dtype=torch.float64))


def test_a_state_saved_without_class_weighted_sums_keeps_its_head_and_goes_on() -> None:
    """A head saved before the class-weighted sums (G and C only) starts them from the shared-covariance balance it
    was solved with: solving again from them gives the same head."""
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(90, 4, generator=gen)
    y = torch.cat([torch.zeros(20), torch.ones(70)]).long()
    g, c = _sums(h + y[:, None].double(), y, 2)
    old = solve_ridge(*balanced_sums(g, c), relative=1e-2)[0]
    head = Analytic(**{"features": "input", "balance": "classes", "ridge": None, "width": None})
    head._start_class_sums(g, c)
    assert head.cls_gram is not None and head.cls_cross is not None
    new = solve_ridge(*class_weighted_sums(head.cls_gram, head.cls_cross, 90), relative=1e-2)[0]
    assert torch.allclose(new, old, atol=1e-9)


def test_balance_keeps_an_old_small_class_against_a_big_new_one() -> None:
    """Two overlapping classes of 40 samples, then two of 400: the balanced head keeps recall of the first
    task's classes where the sample-weighted one hands their samples to the bigger classes."""
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 8, generator=gen) * 0.8
    def task(classes: list[int], n: int, name: str) -> Experience:
        y = torch.tensor(classes).repeat_interleave(n)
        x = centres[y] + torch.randn(len(y), 8, generator=gen)
        return Experience(name, x, y - classes[0], tuple(str(c) for c in classes))
    spec = NetworkSpec(InputSpec("vector", dim=8), backbone="identity")
    test = task([0, 1], 500, "t0")
    recall = {}
    for balance in ("classes", "samples"):
        learner = Learner.create(spec)
        learner.learn(task([0, 1], 40, "t0"), "analytic", {"balance": balance, "features": "input"}, FAST)
        learner.learn(task([2, 3], 400, "t1"), "analytic", {"balance": balance, "features": "input"}, FAST)
        recall[balance] = sum(p in ("0", "1") for p in learner.predict(test.x)) / len(test.x)
    assert recall["classes"] > recall["samples"] + 0.05


def test_a_random_feature_head_reloads_and_exports_with_its_expansion(digits: SplitBenchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from model_core.checkpoint import load_bundle, save_bundle
    from model_core.export import export_onnx

    learner = Learner.create(digit_spec(backbone="identity"))
    for exp in digits.train[:2]:
        learner.learn(exp, "analytic", None, FAST)
    save_bundle(tmp_path / "b", learner, {"name": "analytic"})
    loaded, _ = load_bundle(tmp_path / "b")
    x = torch.cat([t.x for t in digits.test[:2]])
    assert torch.equal(loaded.logits(x), learner.logits(x))
    loaded.learn(digits.train[2], "analytic", None, FAST)  # the expansion and the sums carry on
    learner.learn(digits.train[2], "analytic", None, FAST)
    assert torch.equal(_head(loaded), _head(learner))
    assert export_onnx(loaded, x[:32]).max_abs_diff < 1e-4


def test_the_ridge_from_g_s_range_alone_equals_the_full_eigendecomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer samples than features (a photo classifier's first classes: G's rank is at most the sample count):
    the solve projects G on its range (``_eigen``) instead of decomposing all of it, and chooses the same ridge
    and the same weights, to float64 rounding, as the full eigendecomposition; balanced sums alike."""
    from model_core.strategies import analytic

    gen = torch.Generator().manual_seed(0)
    h = torch.rand(70, 400, generator=gen, dtype=torch.float64) ** 3  # nonnegative, skewed, like pooled features
    g, c = _sums(h, torch.arange(70) % 4, 4)
    for gram, cross, n in ((g, c, 70), balanced_sums(g, c)):
        s, _ = analytic._eigen(gram, n)
        assert len(s) == n + analytic.OVERSAMPLE < gram.shape[0]  # the projected path ran
        got, ridge = solve_ridge(gram, cross, n)
        with monkeypatch.context() as m:
            m.setattr(analytic, "_eigen", lambda gram, n: torch.linalg.eigh(gram))
            want, want_ridge = solve_ridge(gram, cross, n)
        assert ridge == want_ridge
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9 * float(want.abs().max()))


@pytest.mark.parametrize("features", ["input", "random"])
def test_a_batch_of_drifted_samples_of_a_known_class_is_learnt_by_the_analytic_head(
    features: str, digits: SplitBenchmark
) -> None:
    """The analytic default on features (``identity`` over 8x8 digits): 40 drifted zeros sent as a batch of only
    that known class join its sums (no new unit), raise the drifted zeros' accuracy and keep the other classes."""
    spec = NetworkSpec(InputSpec("vector", dim=64), backbone="identity")
    flat = [Experience(e.task, e.x.flatten(1), e.y, e.classes) for e in (*digits.train[:3], *digits.test[:3])]
    train, test = flat[:3], flat[3:]
    learner = Learner.create(spec)
    for exp in train:
        learner.learn(exp, "analytic", {"features": features}, FAST)

    def drift(x: torch.Tensor) -> torch.Tensor:  # the strokes shift right by 2 pixels and fade
        return torch.roll(x.reshape(-1, 8, 8), shifts=2, dims=-1).flatten(1) * 0.6

    zeros = torch.nonzero(train[0].y == 0).flatten()
    test_zeros = test[0].x[test[0].y == 0]
    drifted = Experience("t0", drift(test_zeros), torch.zeros(len(test_zeros), dtype=torch.long), train[0].classes)
    others = test
    before, kept_before = learner.accuracy(drifted), sum(learner.accuracy(e) for e in others) / 3
    result = learner.learn(Experience("more zeros", drift(train[0].x[zeros[:40]]), torch.zeros(40, dtype=torch.long),
                                      ("0",)), "analytic", {"features": features}, FAST)  # fmt: skip
    assert result.new_labels == [] and learner.model.num_units == 6
    assert learner.accuracy(drifted) > before + 0.2, (before, learner.accuracy(drifted))
    assert sum(learner.accuracy(e) for e in others) / 3 >= kept_before - 0.03
