"""An exemplar-free analytic head on frozen features (as analytic class-incremental learning and RanPAC do).

The head is the ridge-regression solution from features to one-hot class targets. It depends on the data only
through two running sums, the Gram matrix G = sum h h^T and the feature-target matrix C = sum h y^T (h with a
constant 1 appended for the bias), so learning task after task gives exactly the head that joint training on
all the data would give, with no sample kept and nothing to forget. The ridge strength is chosen for each solve
by generalised cross-validation, which needs only the same sums. No gradient steps are taken: ``iterations`` is
ignored.

What h is (``features``): the frozen features themselves ("input"), or, by default, a fixed seeded random
projection of them through a ReLU ("random", RanPAC: McDonnell et al. 2023), whose ``width`` follows the
feature dimension up to a memory bound (``random_width``): the solve keeps G and its class-weighted twin (below),
each (width+1)^2 float64 values (2,048: 32 MiB each, in memory and in every version's saved state; 4,096: 128 MiB). The projection is part of the classifier (and of its
ONNX graph): ``model_core.networks.random_features``.

Balanced across classes (``balance`` "classes", the default): a class with 5 times the samples of another no
longer gets 5 times its say. The solve uses the sums of a stream in which every sample of class c weighs
m / n_c (m = N / U, the mean count): weighted least squares, so every class has the same total weight m, with its
own mean and its own within-class scatter. They come from a third pair of running sums kept beside G and C, each
sample added with weight 1 / n_c (n_c its class's count once the job's samples are in):

    G_cls = sum_c G_c / n_c,   C_cls = sum_c mu_c e_c^T,   G_bal = m G_cls,   C_bal = m C_cls

(G_c: the class's own sum of h h^T), so the head stays order-independent, is exact for any class whose samples
came in one job, and is the unchanged joint solution when every class has the same count. E[G_c / n_c] =
Sigma_c + mu_c mu_c^T whatever n_c, so on unequal counts E[G_bal] and E[C_bal] are exactly those of equal counts,
whatever each class's own covariance Sigma_c (tests/unit/test_analytic.py). A class sent again in a later job
(more samples of a known class) has its new samples added with weight 1 / (its count after the job), so its older
samples keep their weight: its total weight w_c is then above 1, and its mean term is brought back to weight 1
(its extra scatter is kept), as ``balanced_sums`` does with counts w_c. The sums cost one more (P+1)^2 float64
matrix in memory and in the saved state (2,048 random features: 32 MiB; 1,280 features: 13 MiB). A state saved
before them (G and C only) starts them from the shared-covariance balance it was solved with: each old class's
mean at weight 1, the pooled within-class scatter over m.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from model_core.config import FEATURE_BACKBONES
from model_core.networks.random_features import ExpandedLinear, RandomFeatures, expansion_of
from model_core.strategies.base import Strategy, TrainContext, register_strategy
from model_core.strategy_specs import SPECS

RIDGE_GRID = torch.logspace(-6, 2, 33, dtype=torch.float64)  # ridge / (mean eigenvalue of G)
# The widest random expansion by default: its Gram matrix is (width+1)^2 float64 (1,536: 18 MiB; 2,048: 32 MiB;
# 4,096: 128 MiB), kept in memory while a job solves and in every version's saved strategy state, and its
# eigendecomposition (cubic in the width) is each solve's cost. banking77 embeddings (384 values), 8 tasks,
# offline: ridge on the embeddings 0.893, on 1,536 random features 0.928, logistic regression 0.908.
MAX_WIDTH = 2048
WIDTH_PER_FEATURE = 4  # width from the data: this many random features per input feature, up to MAX_WIDTH
CHUNK = 2048  # rows expanded at a time while accumulating (a (CHUNK, width) float64 block)


def random_width(dim: int, asked: int | None = None) -> int:
    """The expansion's width for ``dim`` features: ``asked``, else WIDTH_PER_FEATURE * dim up to MAX_WIDTH."""
    return int(asked) if asked is not None else min(MAX_WIDTH, WIDTH_PER_FEATURE * dim)


def gram_bytes(width: int) -> int:
    """Bytes of the Gram matrix (with the bias row) of a ``width``-wide expansion, float64."""
    return (width + 1) ** 2 * 8


def balanced_sums(gram: Tensor, cross: Tensor) -> tuple[Tensor, Tensor, int]:
    """(G_bal, C_bal, N) from the running sums: every class reweighted to the mean count (module docstring).
    Units with no sample yet (none in a class-incremental head) keep no weight."""
    counts = cross[-1]  # (U,) the bias row: samples of each class
    seen = counts > 0
    n = float(counts.sum())
    m = n / max(int(seen.sum()), 1)
    safe = torch.where(seen, counts, torch.ones_like(counts))
    d = torch.where(seen, m / safe.square() - 1.0 / safe, torch.zeros_like(counts))  # (U,)
    g = gram + (cross * d) @ cross.T
    c = cross * torch.where(seen, m / safe, torch.zeros_like(counts))
    return (g + g.T) / 2, c, round(n)


def class_weighted_sums(gram_cls: Tensor, cross_cls: Tensor, count: int) -> tuple[Tensor, Tensor, int]:
    """(G_bal, C_bal, N) from the class-weighted sums (module docstring): every class's mean at one weight, the
    whole scaled so that the classes' weights add up to the ``count`` samples learnt."""
    g, c, _ = balanced_sums(gram_cls, cross_cls)
    mass = float(cross_cls[-1].sum())
    scale = count / mass if mass > 0 else 1.0
    return g * scale, c * scale, count


OVERSAMPLE = 16  # random directions beyond the rank bound when G's range is found by projection (``_eigen``)


def _eigen(gram: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """G's eigenvalues (k,) and eigenvectors (D, k), every one with a nonzero eigenvalue among them.

    G is a sum of ``n`` outer products (the balanced sums too: their extra term lies in the same span), so its
    rank is at most n. Where n is well under D (a photo classifier's first classes: 80 samples against 1,281
    features), the range of G times a random (D, n + OVERSAMPLE) matrix is the range of G (almost surely), and the
    eigenpairs of G restricted to it (Rayleigh-Ritz) are its nonzero ones: two (D, D) x (D, k) products, a QR and a
    (k, k) eigendecomposition, where a full one of G costs O(D^3) (1,281: about 0.6 s on 2 cores, most of a new
    photo class's job). The directions left out have eigenvalue 0 and no part of C, so they add nothing to the
    weights, the residual or the degrees of freedom. Otherwise: the full eigendecomposition."""
    d, k = gram.shape[0], n + OVERSAMPLE
    if 2 * k > d:
        values, vectors = torch.linalg.eigh(gram)
        return values, vectors
    omega = torch.randn(d, k, dtype=gram.dtype, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(gram @ omega)  # (D, k) orthonormal, spanning G's range
    small = q.T @ gram @ q
    s, u = torch.linalg.eigh((small + small.T) / 2)
    return s, q @ u


def _mean_eigenvalue(s: Tensor, gram: Tensor) -> float:
    """The mean of all D eigenvalues of G, from those ``_eigen`` found (the ones it left out are 0)."""
    d = gram.shape[0]
    return (float(s.mean()) if len(s) == d else max(float(torch.trace(gram)), 0.0) / d) or 1.0


def _dof(s: Tensor, lam: float) -> float:
    """The ridge's degrees of freedom, tr(G (G + lam I)^-1), from G's eigenvalues ``s``."""
    return float((s / (s + lam)).sum())


def ridge_dof(gram: Tensor, n: int, relative: float) -> float:
    """The degrees of freedom of the ridge ``relative`` (as ``solve_ridge`` chose it) on G of ``n`` samples."""
    s, _ = _eigen(gram, n)
    s = s.clamp_min(0)
    return _dof(s, relative * _mean_eigenvalue(s, gram))


def solve_ridge(gram: Tensor, cross: Tensor, n: int, relative: float | None = None) -> tuple[Tensor, float]:
    """Ridge weights (D, U) from G (D, D), C (D, U) and the sample count; the ridge (relative to the mean
    eigenvalue of G) is ``relative`` or, when None, the grid value with the lowest GCV score."""
    s, v = _eigen(gram, n)
    s = s.clamp_min(0)
    vc = v.T @ cross  # (k, U)
    scale = _mean_eigenvalue(s, gram)
    y_sq = float(n)  # sum of squared one-hot targets
    best: tuple[float, float] | None = None
    for rel in [relative] if relative is not None else RIDGE_GRID.tolist():
        lam = rel * scale
        coef = vc / (s + lam)[:, None]  # the weights in G's eigenbasis (its range)
        # residual sum of squares from the sums alone: |Y|^2 - 2 tr(W^T C) + tr(W^T G W)
        rss = y_sq - 2 * float((coef * vc).sum()) + float((coef.square() * s[:, None]).sum())
        dof = _dof(s, lam)
        score = n * max(rss, 0.0) / max(n - dof, 1e-9) ** 2
        if best is None or score < best[0]:
            best = (score, rel)
    assert best is not None
    lam = best[1] * scale
    return v @ (vc / (s + lam)[:, None]), best[1]


def _with_bias(f: Tensor) -> Tensor:
    return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)  # (N, D+1): the bias as a constant feature


def _accumulate(gram: Tensor | None, cross: Tensor | None, h: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The sums grown by rows ``h`` (N, P) float64 with bias, labels y (N, U) float64."""
    return _grow(gram, cross, h.T @ h, h.T @ y)


def _grow(gram: Tensor | None, cross: Tensor | None, g: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The sums plus (g, c), ``cross`` widened to ``c``'s units."""
    if gram is None or cross is None:
        return g, c
    grown = torch.zeros_like(c)
    grown[:, : cross.shape[1]] = cross
    return gram + g, grown + c


@register_strategy
class Analytic(Strategy):
    spec = SPECS["analytic"]
    gradient_steps = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # The raw features' sums (D+1, D+1) and (D+1, U), float64: the solve's when features is "input", and the
        # novelty's (model_core.novelty.from_analytic) either way.
        self.gram: Tensor | None = None
        self.cross: Tensor | None = None
        self.count = 0
        # The random features' sums (width+1, width+1) and (width+1, U), when features is "random"
        self.rf_gram: Tensor | None = None
        self.rf_cross: Tensor | None = None
        # The class-weighted sums of the solve's features (``balance`` "classes"): every sample added with weight
        # 1 / (its class's count), same shapes as the solve's G and C
        self.cls_gram: Tensor | None = None
        self.cls_cross: Tensor | None = None
        self.chosen_ridge: float | None = None
        self.width: int | None = None

    def before_experience(self, ctx: TrainContext) -> None:
        if ctx.replays_inputs:
            raise ValueError(
                "strategy 'analytic' needs a frozen pretrained backbone (e.g. timm/efficientnet_lite0, train 'frozen'), "
                "or backbone 'identity' when the inputs already are features; this classifier trains its backbone"
            )
        random = self._features(ctx) == "random"
        have = expansion_of(ctx.model.heads)
        if have is not None and not random:
            raise ValueError("this classifier's analytic head reads random features; learn with features 'random'")
        if random and self.count and self.rf_gram is None:
            raise ValueError("this classifier's analytic head reads its features as they are; learn with features "
                             "'input' (the random features' sums would miss every sample learnt so far)")  # fmt: skip

    def _features(self, ctx: TrainContext) -> str:
        """The asked ``features``; null: "random" on inputs declared as features (``identity``: banking77 0.924
        against 0.893 for the ridge on the embeddings) and on a sentence encoder's (the same all-MiniLM-L6-v2
        embeddings, computed by the service: issue 32 measured 0.931 with 4,096 random features, 0.867 without),
        "input" on a pretrained photo backbone's (cifar10-mini 5x2 through the service: 0.789 on the features,
        0.763 on 2,048 random features)."""
        asked = self.params["features"]
        if asked is not None:
            return str(asked)
        bb = ctx.model.spec.backbone
        return "random" if bb.name in FEATURE_BACKBONES or bb.text else "input"

    def _expansion(self, ctx: TrainContext) -> RandomFeatures:
        """The classifier's expansion, made (seeded, its width from the data) on its first experience."""
        have = expansion_of(ctx.model.heads)
        if have is not None:
            return have
        dim = int(ctx.data.x[0].numel())
        asked = self.params["width"]
        return RandomFeatures(dim, random_width(dim, None if asked is None else int(asked)), seed=ctx.config.seed)

    def after_experience(self, ctx: TrainContext) -> None:
        x = ctx.data.x.flatten(1)
        y = torch.zeros(len(x), ctx.num_units, dtype=torch.float64)
        y[torch.arange(len(x)), ctx.data.y] = 1.0
        random = self._features(ctx) == "random"
        if self.count and self.cls_gram is None:  # a state saved before the class-weighted sums
            self._start_class_sums(self.rf_gram if random else self.gram, self.rf_cross if random else self.cross)
        # each sample's weight in the class-weighted sums: 1 / (its class's count once this job's samples are in)
        before = torch.zeros(ctx.num_units, dtype=torch.float64)
        if self.cross is not None:
            before[: self.cross.shape[1]] = self.cross[-1]
        counts = before + torch.bincount(ctx.data.y.cpu(), minlength=ctx.num_units).double()
        weight = (1.0 / counts.clamp_min(1.0))[ctx.data.y.cpu()]
        raw = _with_bias(x.double())
        self.gram, self.cross = _accumulate(self.gram, self.cross, raw, y)
        self.count += len(x)
        expansion = None
        if random:
            expansion = self._expansion(ctx).to("cpu")
            with torch.no_grad():
                for i in range(0, len(x), CHUNK):
                    h = _with_bias(expansion(x[i : i + CHUNK].float().cpu()).double())
                    self.rf_gram, self.rf_cross = _accumulate(self.rf_gram, self.rf_cross, h, y[i : i + CHUNK])
                    self._add_weighted(h, y[i : i + CHUNK], weight[i : i + CHUNK])
            self.width = expansion.width
            gram, cross = self.rf_gram, self.rf_cross
        else:
            self._add_weighted(raw, y, weight)
            gram, cross = self.gram, self.cross
        assert gram is not None and cross is not None
        if self.params["balance"] == "classes":
            assert self.cls_gram is not None and self.cls_cross is not None
            gram, cross, n = class_weighted_sums(self.cls_gram, self.cls_cross, int(cross[-1].sum().round()))
        else:
            n = self.count
        ridge = self.params["ridge"]
        weights, self.chosen_ridge = solve_ridge(gram, cross, n, None if ridge is None else float(ridge))
        self._write_heads(ctx, weights, expansion)
        ctx.report("train", 1, 1, ridge=float(self.chosen_ridge))

    def _add_weighted(self, h: Tensor, y: Tensor, weight: Tensor) -> None:
        hw = h * weight[:, None]
        # (hw.T @ h) is symmetric but for BLAS rounding in many entries; made exactly symmetric (sums of symmetric
        # matrices stay so), so that the stored state keeps its upper triangle only (model_core.state_content)
        g = hw.T @ h
        self.cls_gram, self.cls_cross = _grow(self.cls_gram, self.cls_cross, (g + g.T) / 2, hw.T @ y)

    def _start_class_sums(self, gram: Tensor | None, cross: Tensor | None) -> None:
        """The class-weighted sums of a state saved without them, from the balance it was solved with (module
        docstring): the shared-covariance balanced sums over the mean count m, every class at weight 1."""
        if gram is None or cross is None:
            return
        g, c, n = balanced_sums(gram, cross)
        m = n / max(int((cross[-1] > 0).sum()), 1) or 1.0
        self.cls_gram, self.cls_cross = g / m, c / m

    @staticmethod
    def _write_heads(ctx: TrainContext, weights: Tensor, expansion: RandomFeatures | None) -> None:
        """Copy the solved weights (P+1, U) into the head blocks; with an expansion, every block becomes an
        ``ExpandedLinear`` over it (the first holding it)."""
        start = 0
        with torch.no_grad():
            for i, head in enumerate(ctx.model.heads):
                linear = cast(nn.Linear, head)
                units = int(linear.out_features)
                ref = linear.weight
                if expansion is not None and not isinstance(linear, ExpandedLinear):
                    linear = ExpandedLinear(expansion.width, units)
                if isinstance(linear, ExpandedLinear):
                    linear.expansion = expansion if i == 0 else None
                block = weights[:, start : start + units].T.to(ref)
                w, b = block[:, :-1], block[:, -1]
                mean, scale = getattr(ctx.model, "feature_mean", None), getattr(ctx.model, "feature_scale", None)
                if not isinstance(linear, ExpandedLinear) and mean is not None and scale is not None:
                    # a plain block reads standardised features (fitted by an earlier gradient job; else the
                    # no-op): the ridge solved on the features themselves, expressed in those coordinates
                    w, b = w * scale.to(w), b + w @ mean.to(w)
                linear.weight.data = w.contiguous().clone()  # contiguous, as a saved one loads
                linear.bias.data = b.contiguous().clone()
                ctx.model.heads[i] = linear.to(ref.device)
                start += units

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.chosen_ridge is None else {"ridge": self.chosen_ridge}
        if self.width is not None:
            out["random_features"] = self.width
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.gram is None:
            return {}
        state: dict[str, Any] = {"gram": self.gram.clone(), "cross": self.cross, "count": self.count}
        if self.rf_gram is not None:
            state |= {"rf_gram": self.rf_gram.clone(), "rf_cross": self.rf_cross, "width": self.width}
        if self.cls_gram is not None:
            state |= {"cls_gram": self.cls_gram.clone(), "cls_cross": self.cls_cross}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.gram, self.cross, self.count = state["gram"], state["cross"], int(state["count"])
            if "rf_gram" in state:
                self.rf_gram, self.rf_cross, self.width = state["rf_gram"], state["rf_cross"], int(state["width"])
            if "cls_gram" in state:
                self.cls_gram, self.cls_cross = state["cls_gram"], state["cls_cross"]
