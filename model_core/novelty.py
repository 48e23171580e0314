"""Novelty: how far an input lies from every known class, from the version's own class models.

An incremental classifier exists because new classes appear, and a softmax gives every input one of the known
labels. The class models some strategies already keep say "none of these" instead (open-set recognition):

- ``class_models``: the logits are each class's log-likelihood (over sqrt(D)); the novelty is minus the
  largest, read off the logits at no extra cost.
- ``generative_replay``: its per-class mixtures of PPCA Gaussians (the generator), in the space it replays
  (raw input for small grey images, frozen features for photos); the novelty is minus the largest class
  log-likelihood, from a ``GaussianHead`` over every class.
- ``analytic``: its running sums give each class's mean and the within-class covariance of the frozen features,
  shrunk towards a multiple of the identity by the oracle approximating shrinkage (Chen et al. 2010), which needs
  only those sums. The novelty is the relative Mahalanobis distance (Ren et al. 2021): half the squared distance
  to the nearest class mean, less that to the mean of all known data under its own covariance, both shrunk the
  same way (0.680 AUROC on unknown cifar10-mini classes against the plain distance's 0.655).

Other strategies keep no class model, and their versions have no novelty (``None``), never a made-up figure.
Higher is more novel. The threshold is calibrated per version on held-out known samples (``calibrate``): a
chosen share of them (95% by default) scores at or below it, and a prediction is ``known`` when its novelty is.

The score is part of the exported ONNX graph (a second output, ``novelty``), so serving stays one run;
``onnx_nodes`` writes the node-by-node form the frozen-backbone export joins to the cached backbone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model_core.networks.class_gaussians import VARIANCE_FLOOR, ClassGaussians
from model_core.networks.gaussian_head import GaussianHead
from model_core.networks.gaussian_head import onnx_nodes as gaussian_nodes
from model_core.strategy_specs import SPECS

KINDS = {
    "max_logit": "class log-likelihood (class_models' logits)",
    "likelihood": "class log-likelihood (generative replay's class models)",
    "mahalanobis": "relative Mahalanobis distance (analytic head's class statistics)",
}
DEFAULT_KNOWN_RATE = 0.95  # share of held-out known samples calibrated as known
FLOOR = -1e4  # the logit gap standing for "no other unit" (one class, or every other unit tied at the top)
SMALL = 1e-8  # below this S, log(log(1 + S)) is log S to double precision


def ambiguity(logits: Tensor, sharpness: Tensor | float = 1.0) -> Tensor:
    """(B, U) -> (B,) float64: with z = logits * sharpness, log(logsumexp(z) - max(z)), i.e. log(-log p_top), the
    log of how far the softmax's top probability falls short of 1 (minus infinity-like for a sure prediction, high
    when classes compete). Computed from the units strictly below the top, stably: log S with S = sum exp(z_j -
    z_top) while S is tiny, log(log(1 + S)) otherwise. The ONNX graph computes it node for node the same way."""
    z = logits.double() * sharpness
    shifted = z - z.max(dim=1, keepdim=True).values
    others = torch.where(shifted < 0, shifted, torch.full_like(shifted, FLOOR))
    top2 = others.max(dim=1, keepdim=True).values
    ls = (top2 + torch.log(torch.exp(others - top2).sum(1, keepdim=True))).squeeze(1)
    big = torch.log(torch.log(1 + torch.exp(ls)))
    return torch.where(torch.exp(ls) < SMALL, ls, big)


class _Novelty(nn.Module):
    """Novelty = the distance (min over classes of surprise_u(x): minus a class log-likelihood, or a Mahalanobis
    distance), standardised, plus the ambiguity of the served logits (``ambiguity``), standardised: each by its
    mean and standard deviation on held-out known samples (``fit_novelty``), so neither's units decide.

    The distance says "far from every class model", the ambiguity "between classes", and unknown inputs are often
    both: a new digit lies near two old ones. The ambiguity is taken of the logits divided by their median
    top-two margin on those held-out samples (``sharpness`` = 1 / that margin): logits come in any units (a
    log-likelihood over sqrt(D), a ridge score), and at their own scale the softmax of a class-models head is
    saturated (mnist-5k's margins are about 25), so its ambiguity ranked only the few known samples near a
    boundary. Rescaled, a typical known sample's top two logits differ by one, and the sum separated unknown
    classes better on 8x8 digits, mnist-5k and generative replay's mnist-5k, and within 0.002 elsewhere (3 seeds,
    python -m benchmarks.novelty; the README has the table). Tried and dropped: each class's typical surprise on
    its own held-out samples subtracted first (it lowered the AUROC on 8x8 digits and mnist-5k); a temperature
    fitted by the held-out log-loss, and a background Gaussian of all known data subtracted from the class-models
    distance (both tried in throwaway scripts, not kept: the first sharpens the softmax further, as held-out known
    samples are nearly all right; the second gained less than the rescaling).
    """

    kind = ""
    stats: Tensor  # (4,) float64: distance mean and 1/std, ambiguity mean and 1/std (0: left out)
    sharpness: Tensor  # () float64: the logits' scale for the ambiguity, 1 / their median top-two margin

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stats", torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
        self.register_buffer("sharpness", torch.tensor(1.0, dtype=torch.float64))

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def parts(self, features: Tensor, inputs: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(distance, ambiguity), each (B,) float64, before standardising."""
        return self.surprise(features, inputs, logits).double().min(dim=1).values, ambiguity(logits, self.sharpness)

    def forward(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        return self.combine(*self.parts(features, inputs, logits))

    def combine(self, dist: Tensor, amb: Tensor) -> Tensor:
        """The novelty (B,) float32 from the two parts: each standardised by ``stats``, summed."""
        st = self.stats
        return ((dist - st[0]) * st[1] + (amb - st[2]) * st[3]).float()


class MaxLogitNovelty(_Novelty):
    """Surprise = minus the logit: the logits are per-class log-likelihoods (every block a ``GaussianHead``)."""

    kind = "max_logit"

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        return -logits.double()


class LikelihoodNovelty(_Novelty):
    """Surprise = minus each class's log-likelihood under one ``GaussianHead`` holding every class's model."""

    kind = "likelihood"

    def __init__(self, head: GaussianHead) -> None:
        super().__init__()
        self.head = head

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        ll: Tensor = self.head(inputs if self.head.reads_input else features)
        return -ll


class MahalanobisNovelty(_Novelty):
    """Surprise = 0.5 |P (z - mu_u)|^2 less 0.5 |P0 (z - mu_0)|^2 (relative Mahalanobis).

    Buffers: P (D, D) the within-class whitening, class means whitened (U, D), P0 (D, D) and mu_0 whitened (D,)
    the background's. P z and P0 z in float32 (P and P0 are stored so), the distances from them in float64 (they
    are large and differences of them), like GaussianHead.

    With ``basis`` Q (D, k), orthonormal, spanning every sample the sums saw and the means (fewer samples than
    features: ``from_analytic``), the same score in k dimensions: both covariances are zero off span(Q) before
    shrinkage, so there each shrunk covariance is a multiple of the identity, and the score is the whitened
    distances of y = Q^T z (P, P0 then (k, k), the means (U, k), (k,)) plus ``perp`` |z - Q y|^2, ``perp`` being
    the difference of the two inverse multiples. All in float64 (the matrices are small): a photo version's
    novelty is then about 1 MB in its graph instead of two 1,280 x 1,280 matrices (13 MB), and a run reads as
    much less.
    """

    kind = "mahalanobis"
    whiten: Tensor
    means: Tensor
    whiten0: Tensor
    mean0: Tensor
    basis: Tensor | None
    perp: Tensor

    def __init__(
        self, whiten: Tensor, means: Tensor, whiten0: Tensor, mean0: Tensor, basis: Tensor | None = None,
        perp: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        dtype = torch.float32 if basis is None else torch.float64
        self.register_buffer("whiten", whiten.to(dtype))
        self.register_buffer("means", means.double())
        self.register_buffer("whiten0", whiten0.to(dtype))
        self.register_buffer("mean0", mean0.double())
        self.register_buffer("basis", None if basis is None else basis.double())
        self.register_buffer("perp", torch.tensor(perp, dtype=torch.float64))

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        z = features.flatten(1)
        extra: Tensor | float = 0.0
        if self.basis is not None:
            z64 = z.double()
            y = z64 @ self.basis  # (B, k)
            extra = self.perp * (z64.square().sum(1, keepdim=True) - y.square().sum(1, keepdim=True))  # (B, 1)
        else:
            # the whitenings in float32 (as stored and served: a float64 copy of two D x D matrices was most of
            # what a photo version cost the serving process), the distances from them in float64
            y = z.float()
        a = (y @ self.whiten.T).double()  # (B, k)
        d2 = a.square().sum(1, keepdim=True) - 2.0 * (a @ self.means.T) + self.means.square().sum(1)  # (B, U)
        b = (y @ self.whiten0.T).double() - self.mean0
        return 0.5 * (d2 - b.square().sum(1, keepdim=True) + extra)


def oas_shrinkage(cov: Tensor, n: int) -> float:
    """The oracle approximating shrinkage (Chen et al. 2010) of a sample covariance over ``n`` samples: the share
    rho of (1 - rho) S + rho tr(S)/p I, from S and n alone (as scikit-learn's ``oas``)."""
    p = cov.shape[0]
    mu = float(torch.trace(cov)) / p
    alpha = float(cov.square().mean())
    den = (n + 1) * (alpha - mu * mu / p)
    return 1.0 if den <= 0 else min((alpha + mu * mu) / den, 1.0)


def shrink(cov: Tensor, rho: float) -> Tensor:
    return (1 - rho) * cov + rho * float(torch.trace(cov)) / cov.shape[0] * torch.eye(cov.shape[0], dtype=cov.dtype)


def _inverse_sqrt(cov: Tensor) -> Tensor:
    """A whitening W with W^T W = cov^-1 (so |W x| is the Mahalanobis norm of x): the inverse Cholesky factor,
    about 25 times faster than an eigendecomposition at 1,280 features and the same distances (it differs from
    the symmetric inverse square root by a rotation only); the clamped inverse square root where the Cholesky
    factorisation fails (a covariance not numerically positive definite)."""
    try:
        low = torch.linalg.cholesky(cov)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype)
        inv: Tensor = torch.linalg.solve_triangular(low, eye, upper=False)
        if bool(torch.isfinite(inv).all()):
            return inv
    except RuntimeError:  # torch.linalg.LinAlgError: not positive definite
        pass
    s, v = torch.linalg.eigh(cov)
    s = s.clamp_min(float(s.max()) * 1e-10 if float(s.max()) > 0 else 1e-12)
    out: Tensor = (v / s.sqrt()) @ v.T
    return out


SPAN_OVERSAMPLE = 16  # random directions beyond the sample count when the samples' span is found (``_span``)


def _span(second: Tensor, extra: Tensor, n: int) -> Tensor | None:
    """An orthonormal (D, k) basis spanning the range of ``second`` (a sum of ``n`` outer products: rank <= n)
    and the columns of ``extra``, found from ``second`` times a random (D, n + SPAN_OVERSAMPLE) matrix; None
    where that would not be well under D (the full-dimensional score is then as cheap)."""
    d = second.shape[0]
    k = n + SPAN_OVERSAMPLE
    if 2 * (k + extra.shape[1]) > d:
        return None
    omega = torch.randn(d, k, dtype=second.dtype, generator=torch.Generator().manual_seed(0))
    q: Tensor = torch.linalg.qr(torch.cat([extra, second @ omega], 1)).Q
    return q


def from_analytic(state: dict[str, Any], units: int) -> MahalanobisNovelty | None:
    """The relative Mahalanobis score from the analytic head's sums (None unless every unit has samples)."""
    gram, cross = state.get("gram"), state.get("cross")
    if gram is None or cross is None or cross.shape[1] != units:
        return None
    counts = cross[-1]  # the constant feature's row: each class's sample count
    if bool((counts <= 0).any()):
        return None
    n = float(gram[-1, -1])
    sums = cross[:-1]  # (D, U)
    means = (sums / counts).T  # (U, D)
    second = gram[:-1, :-1]
    within = (second - (sums / counts) @ sums.T) / max(n - units, 1.0)
    mean0 = gram[:-1, -1] / n
    # one shrinkage for both, the within-class covariance's: shrunk apart (each its own OAS share), the two
    # distances stop being comparable and the difference ranked unknown cifar10-mini classes below known ones
    rho = oas_shrinkage(within, int(n))
    d = second.shape[0]
    mu_w = float(torch.trace(within)) / d
    mu_t = (float(torch.trace(second)) / n - float(mean0 @ mean0)) / d
    q = _span(second, torch.cat([means.T, mean0[:, None]], 1), round(n)) if rho * min(mu_w, mu_t) > 0 else None
    if q is None:
        total = second / n - torch.outer(mean0, mean0)
        w, w0 = _inverse_sqrt(shrink(within, rho)), _inverse_sqrt(shrink(total, rho))
        return MahalanobisNovelty(w, means @ w.T, w0, w0 @ mean0)
    # both covariances restricted to span(Q) (k, k), shrunk as the full ones would be (towards their full trace)
    sq, mq, m0q = q.T @ second @ q, means @ q, mean0 @ q
    cq = sq - (sums.T @ q / counts[:, None]).T @ (sums.T @ q)  # Q^T (second - sums diag(1/counts) sums^T) Q
    within_q = cq / max(n - units, 1.0)
    total_q = sq / n - torch.outer(m0q, m0q)
    eye = torch.eye(q.shape[1], dtype=q.dtype)
    w = _inverse_sqrt((1 - rho) * within_q + rho * mu_w * eye)
    w0 = _inverse_sqrt((1 - rho) * total_q + rho * mu_t * eye)
    perp = 1.0 / (rho * mu_w) - 1.0 / (rho * mu_t)  # off the span: the two shrunk covariances' inverse multiples
    return MahalanobisNovelty(w, mq @ w.T, w0, w0 @ m0q, basis=q, perp=perp)


def novelty_module(learner: Any) -> nn.Module | None:
    """The version's novelty score, or None when no strategy state holds a model of every class."""
    model = learner.model
    units = int(model.num_units)
    if units == 0 or getattr(model, "task_network", None) is not None:  # per-task networks (packnet) keep none
        return None
    if all(isinstance(h, GaussianHead) for h in model.heads):
        return MaxLogitNovelty()
    states = learner.strategy_states
    if "analytic" in states and learner.frozen_backbone:
        found = from_analytic(states["analytic"], units)
        if found is not None:
            return found
    gaussians = (states.get("generative_replay") or {}).get("gaussians")
    if gaussians is not None:
        models = ClassGaussians.from_state(gaussians)
        if set(range(units)) <= set(models.units):
            floor = float(SPECS["generative_replay"].defaults.get("variance_floor", VARIANCE_FLOOR))
            space = "features" if learner.frozen_backbone else "input"
            return LikelihoodNovelty(GaussianHead.from_models(models, list(range(units)), space, floor))
    return None


def _inputs(learner: Any, x: Tensor, batch_size: int = 512) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(features, inputs, logits) of ``x`` in batches, as the graph sees them (the features: the frozen
    backbone's, else the inputs themselves; the logits: float32, as served)."""
    logits = learner.logits(x)
    feats = learner.features(x) if learner.frozen_backbone else x.float()
    return [(feats[i : i + batch_size], x[i : i + batch_size].float(), logits[i : i + batch_size])
            for i in range(0, len(x), batch_size)]  # fmt: skip


def _batches(learner: Any, x: Tensor, fn: Any) -> Tensor:
    return torch.cat([fn(*b) for b in _inputs(learner, x)]).float()


@torch.no_grad()
def novelty_scores(learner: Any, x: Tensor, module: nn.Module | None = None) -> Tensor | None:
    """(N,) novelty of inputs ``x`` under the version's score (``module``, or the learner's own), None without one."""
    module = module if module is not None else novelty_module(learner)
    if module is None:
        return None
    return _batches(learner, x, module.cpu().eval()) if len(x) else torch.zeros(0)


@torch.no_grad()
def fit_novelty(learner: Any, module: nn.Module, x: Tensor, known_rate: float = DEFAULT_KNOWN_RATE) -> float:
    """Fit ``module`` on held-out known samples ``x``: the ambiguity's sharpness (1 / the logits' median top-two
    margin), then each part's mean and spread (the ambiguity is left out where it does not vary: one class); return
    the threshold under which ``known_rate`` of their novelty lies."""
    assert isinstance(module, _Novelty)
    module.cpu().eval()
    batches = _inputs(learner, x)  # the backbone runs once over x: a frozen pretrained one is the costly part
    module.sharpness.fill_(sharpness(torch.cat([logits for _, _, logits in batches])))
    dist, amb = (torch.cat(p) for p in zip(*[module.parts(*b) for b in batches], strict=True))
    sd, sa = float(dist.std()), float(amb.std()) if len(amb) > 1 else 0.0
    module.stats.copy_(torch.tensor([float(dist.mean()), 1.0 / sd if sd > 0 else 1.0, float(amb.mean()),
                                     1.0 / sa if sa > 1e-9 else 0.0], dtype=torch.float64))  # fmt: skip
    return calibrate(module.combine(dist, amb), known_rate)


def sharpness(logits: Tensor) -> float:
    """1 / the median margin between the top two logits of known samples (1 where there is no second unit or
    no margin), the scale at which the ambiguity reads them."""
    if logits.shape[1] < 2 or len(logits) == 0:
        return 1.0
    top2 = logits.double().topk(2, dim=1).values
    margin = float((top2[:, 0] - top2[:, 1]).median())
    return 1.0 / margin if math.isfinite(margin) and margin > 1e-6 else 1.0


def calibrate(scores: Tensor, known_rate: float = DEFAULT_KNOWN_RATE) -> float:
    """The threshold at or below which ``known_rate`` of these known samples' novelty lies: the conformal quantile
    (the ceil((n + 1) * rate)-th smallest of n), so that a new known sample from the same distribution falls at
    or below it with probability at least ``known_rate`` (at most the largest score on small sets)."""
    if not 0 < known_rate <= 1:
        raise ValueError(f"known_rate must be in (0, 1]; got {known_rate}")
    if len(scores) == 0:
        raise ValueError("no known samples to calibrate the novelty threshold on")
    ordered = torch.sort(scores.double()).values
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(known_rate * (len(ordered) + 1)) - 1))])


def onnx_nodes(module: nn.Module, features: str, logits: str, out: str, opset: int) -> tuple[list[Any], list[Any]]:
    """Nodes computing ``module``'s novelty (B,) float32 into ``out`` from the graph's ``features`` and ``logits``
    (frozen-backbone graphs: the features are the backbone's output), as ``_Novelty.forward`` does."""
    from onnx import TensorProto, helper

    assert isinstance(module, _Novelty)
    nodes: list[Any]
    inits: list[Any] = []
    if isinstance(module, MaxLogitNovelty):
        nodes = [_reduce("ReduceMax", logits, "nov.top1", opset), helper.make_node("Neg", ["nov.top1"], ["nov.dist32"]),
                 helper.make_node("Cast", ["nov.dist32"], ["nov.dist"], to=TensorProto.DOUBLE)]  # fmt: skip
    elif isinstance(module, LikelihoodNovelty):
        nodes, inits = gaussian_nodes(module.head, features, "nov.ll", "nov.head", opset)
        nodes += [_reduce("ReduceMax", "nov.ll", "nov.top1", opset), helper.make_node("Neg", ["nov.top1"],
                                                                                      ["nov.dist32"]),
                  helper.make_node("Cast", ["nov.dist32"], ["nov.dist"], to=TensorProto.DOUBLE)]  # fmt: skip
    else:
        assert isinstance(module, MahalanobisNovelty)
        nodes, inits = _mahalanobis_nodes(module, features, "nov.dist", opset)
    more_nodes, more_inits = _combine_nodes(module, logits, "nov.dist", out, opset)
    return nodes + more_nodes, [*inits, *more_inits, _const("axes1", np.array([1], dtype=np.int64))]


def _const(name: str, value: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(value), f"nov.{name}")


def _reduce(op: str, src: str, dst: str, opset: int, keepdims: int = 0) -> Any:
    from onnx import helper

    if op == "ReduceSum" or opset >= 18:  # axes became an input (ReduceSum in opset 13, the rest in 18)
        return helper.make_node(op, [src, "nov.axes1"], [dst], keepdims=keepdims)
    return helper.make_node(op, [src], [dst], axes=[1], keepdims=keepdims)


def _mahalanobis_nodes(module: MahalanobisNovelty, features: str, out: str, opset: int) -> tuple[list[Any], list[Any]]:
    """min over classes of 0.5 |P z - P mu_u|^2, less 0.5 |P0 z - P0 mu_0|^2, in float64 (B,) into ``out``; with
    a basis, of y = Q^T z in float64 and plus 0.5 perp |z - Q y|^2 (as ``MahalanobisNovelty.surprise``)."""
    from onnx import TensorProto, helper

    inits = [_const("whitenT", module.whiten.T.cpu().numpy()), _const("meansT", module.means.T.cpu().numpy()),
             _const("mean_sq", module.means.square().sum(1).cpu().numpy()),
             _const("whiten0T", module.whiten0.T.cpu().numpy()), _const("mean0", module.mean0.cpu().numpy()),
             _const("minus2", np.array(-2.0)), _const("half", np.array(0.5))]  # fmt: skip
    d = TensorProto.DOUBLE
    if module.basis is None:
        y, perp = features, []  # the whitening products in float32, as surprise: no float64 copy of the matrices
    else:
        inits += [_const("basis", module.basis.cpu().numpy()), _const("perp", module.perp.cpu().numpy())]
        y = "nov.y"
        perp = [
            helper.make_node("Cast", [features], ["nov.z"], to=d),
            helper.make_node("MatMul", ["nov.z", "nov.basis"], [y]),  # (B, k)
            helper.make_node("Mul", ["nov.z", "nov.z"], ["nov.z2"]),
            _reduce("ReduceSum", "nov.z2", "nov.zz", opset, keepdims=1),  # (B, 1)
            helper.make_node("Mul", [y, y], ["nov.y2"]),
            _reduce("ReduceSum", "nov.y2", "nov.yy", opset, keepdims=1),
            helper.make_node("Sub", ["nov.zz", "nov.yy"], ["nov.off"]),
            helper.make_node("Mul", ["nov.off", "nov.perp"], ["nov.offp"]),
        ]
    nodes = [
        *perp,
        helper.make_node("MatMul", [y, "nov.whitenT"], ["nov.a32"]),  # (B, k)
        helper.make_node("Cast", ["nov.a32"], ["nov.a"], to=d),
        helper.make_node("Mul", ["nov.a", "nov.a"], ["nov.a2"]),
        _reduce("ReduceSum", "nov.a2", "nov.aa", opset, keepdims=1),  # (B, 1)
        helper.make_node("MatMul", ["nov.a", "nov.meansT"], ["nov.am"]),  # (B, U)
        helper.make_node("Mul", ["nov.am", "nov.minus2"], ["nov.am2"]),
        helper.make_node("Add", ["nov.aa", "nov.am2"], ["nov.d0"]),
        helper.make_node("Add", ["nov.d0", "nov.mean_sq"], ["nov.d2"]),
        helper.make_node("MatMul", [y, "nov.whiten0T"], ["nov.b032"]),
        helper.make_node("Cast", ["nov.b032"], ["nov.b0"], to=d),
        helper.make_node("Sub", ["nov.b0", "nov.mean0"], ["nov.b"]),
        helper.make_node("Mul", ["nov.b", "nov.b"], ["nov.b2"]),
        _reduce("ReduceSum", "nov.b2", "nov.bb", opset, keepdims=1),  # (B, 1)
        helper.make_node("Sub", ["nov.d2", "nov.bb"], ["nov.rel0"]),
        helper.make_node("Add", ["nov.rel0", "nov.offp"], ["nov.rel"]) if perp else
        helper.make_node("Identity", ["nov.rel0"], ["nov.rel"]),
        helper.make_node("Mul", ["nov.rel", "nov.half"], ["nov.rel2"]),
        _reduce("ReduceMin", "nov.rel2", out, opset),
    ]
    return nodes, inits


def _combine_nodes(module: _Novelty, logits: str, dist: str, out: str, opset: int) -> tuple[list[Any], list[Any]]:
    """The ambiguity of ``logits`` (as ``ambiguity``) and the standardised sum with ``dist``, into ``out``."""
    from onnx import TensorProto, helper

    st = module.stats.cpu().numpy()
    inits = [_const("floor", np.array(FLOOR)), _const("small", np.array(SMALL)), _const("zero", np.array(0.0)),
             _const("one", np.array(1.0)), _const("mu_d", st[0:1]), _const("inv_d", st[1:2]), _const("mu_a", st[2:3]),
             _const("inv_a", st[3:4]), _const("sharpness", module.sharpness.cpu().numpy())]  # fmt: skip
    m = helper.make_node
    nodes = [
        m("Cast", [logits], ["nov.l0"], to=TensorProto.DOUBLE),
        m("Mul", ["nov.l0", "nov.sharpness"], ["nov.l"]),
        _reduce("ReduceMax", "nov.l", "nov.ltop", opset, keepdims=1),
        m("Sub", ["nov.l", "nov.ltop"], ["nov.shift"]),
        m("Less", ["nov.shift", "nov.zero"], ["nov.below"]),
        m("Where", ["nov.below", "nov.shift", "nov.floor"], ["nov.others"]),
        _reduce("ReduceMax", "nov.others", "nov.top2", opset, keepdims=1),
        m("Sub", ["nov.others", "nov.top2"], ["nov.o2"]),
        m("Exp", ["nov.o2"], ["nov.e"]),
        _reduce("ReduceSum", "nov.e", "nov.es", opset, keepdims=1),
        m("Log", ["nov.es"], ["nov.les"]),
        m("Add", ["nov.les", "nov.top2"], ["nov.ls1"]),
        _reduce("ReduceSum", "nov.ls1", "nov.ls", opset),  # (B, 1) -> (B,)
        m("Exp", ["nov.ls"], ["nov.S"]),
        m("Add", ["nov.S", "nov.one"], ["nov.S1"]),
        m("Log", ["nov.S1"], ["nov.lS1"]),
        m("Log", ["nov.lS1"], ["nov.big"]),
        m("Less", ["nov.S", "nov.small"], ["nov.tiny"]),
        m("Where", ["nov.tiny", "nov.ls", "nov.big"], ["nov.amb"]),
        m("Sub", [dist, "nov.mu_d"], ["nov.dc"]),
        m("Mul", ["nov.dc", "nov.inv_d"], ["nov.dz"]),
        m("Sub", ["nov.amb", "nov.mu_a"], ["nov.ac"]),
        m("Mul", ["nov.ac", "nov.inv_a"], ["nov.az"]),
        m("Add", ["nov.dz", "nov.az"], ["nov.sum"]),
        m("Cast", ["nov.sum"], [out], to=TensorProto.FLOAT),
    ]
    return nodes, inits
