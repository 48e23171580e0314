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


class _Novelty(nn.Module):
    """Novelty = min over classes of surprise_u(x): minus a class log-likelihood, or a Mahalanobis distance.

    Tried and dropped: each class's typical surprise on its own held-out samples subtracted first (a '1' is far
    more likely under its model than an '8' under its own); it lowered the AUROC on 8x8 digits and mnist-5k."""

    kind = ""

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        return self.surprise(features, inputs, logits).min(dim=1).values


class MaxLogitNovelty(_Novelty):
    """Surprise = minus the logit: the logits are per-class log-likelihoods (every block a ``GaussianHead``)."""

    kind = "max_logit"

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        return -logits


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
    the background's. Computed in float64 (the distances are large and differences of them), like GaussianHead.
    """

    kind = "mahalanobis"
    whiten: Tensor
    means: Tensor
    whiten0: Tensor
    mean0: Tensor

    def __init__(self, whiten: Tensor, means: Tensor, whiten0: Tensor, mean0: Tensor) -> None:
        super().__init__()
        self.register_buffer("whiten", whiten.float())
        self.register_buffer("means", means.double())
        self.register_buffer("whiten0", whiten0.float())
        self.register_buffer("mean0", mean0.double())

    def surprise(self, features: Tensor, inputs: Tensor, logits: Tensor) -> Tensor:
        z = features.flatten(1).double()
        a = z @ self.whiten.double().T  # (B, D)
        d2 = a.square().sum(1, keepdim=True) - 2.0 * (a @ self.means.T) + self.means.square().sum(1)  # (B, U)
        b = z @ self.whiten0.double().T - self.mean0
        return (0.5 * (d2 - b.square().sum(1, keepdim=True))).float()


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
    s, v = torch.linalg.eigh(cov)
    s = s.clamp_min(float(s.max()) * 1e-10 if float(s.max()) > 0 else 1e-12)
    out: Tensor = (v / s.sqrt()) @ v.T
    return out


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
    total = second / n - torch.outer(mean0, mean0)
    # one shrinkage for both, the within-class covariance's: shrunk apart (each its own OAS share), the two
    # distances stop being comparable and the difference ranked unknown cifar10-mini classes below known ones
    rho = oas_shrinkage(within, int(n))
    w, w0 = _inverse_sqrt(shrink(within, rho)), _inverse_sqrt(shrink(total, rho))
    return MahalanobisNovelty(w, means @ w.T, w0, w0 @ mean0)


def novelty_module(learner: Any) -> nn.Module | None:
    """The version's novelty score, or None when no strategy state holds a model of every class."""
    model = learner.model
    units = int(model.num_units)
    if units == 0:
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


def _batches(learner: Any, x: Tensor, fn: Any, batch_size: int = 512) -> Tensor:
    logits = learner.logits(x)
    feats = learner.features(x) if learner.frozen_backbone else x.float()
    out = [fn(feats[i : i + batch_size], x[i : i + batch_size].float(), logits[i : i + batch_size])
           for i in range(0, len(x), batch_size)]  # fmt: skip
    return torch.cat(out).float()


@torch.no_grad()
def novelty_scores(learner: Any, x: Tensor, module: nn.Module | None = None) -> Tensor | None:
    """(N,) novelty of inputs ``x`` under the version's score (``module``, or the learner's own), None without one."""
    module = module if module is not None else novelty_module(learner)
    if module is None:
        return None
    return _batches(learner, x, module.cpu().eval()) if len(x) else torch.zeros(0)


@torch.no_grad()
def fit_novelty(learner: Any, module: nn.Module, x: Tensor, known_rate: float = DEFAULT_KNOWN_RATE) -> float:
    """The threshold under which ``known_rate`` of held-out known samples ``x`` score."""
    scores = novelty_scores(learner, x, module)
    assert scores is not None
    return calibrate(scores, known_rate)


def calibrate(scores: Tensor, known_rate: float = DEFAULT_KNOWN_RATE) -> float:
    """The threshold at or below which ``known_rate`` of these known samples' novelty lies."""
    if not 0 < known_rate <= 1:
        raise ValueError(f"known_rate must be in (0, 1]; got {known_rate}")
    if len(scores) == 0:
        raise ValueError("no known samples to calibrate the novelty threshold on")
    ordered = torch.sort(scores.double()).values
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(known_rate * len(ordered)) - 1))])


def onnx_nodes(module: nn.Module, features: str, logits: str, out: str, opset: int) -> tuple[list[Any], list[Any]]:
    """Nodes computing ``module``'s novelty (B,) float32 into ``out`` from the graph's ``features`` and ``logits``
    (frozen-backbone graphs: the features are the backbone's output)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def reduce(op: str, src: str, dst: str) -> Any:
        if op == "ReduceSum" or opset >= 18:
            return helper.make_node(op, [src, "nov.axes1"], [dst], keepdims=0)
        return helper.make_node(op, [src], [dst], axes=[1], keepdims=0)

    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "nov.axes1")]
    if isinstance(module, MaxLogitNovelty):
        return [reduce("ReduceMax", logits, "nov.top"), helper.make_node("Neg", ["nov.top"], [out])], inits
    if isinstance(module, LikelihoodNovelty):
        nodes, more = gaussian_nodes(module.head, features, "nov.ll", "nov.head", opset)
        return [*nodes, reduce("ReduceMax", "nov.ll", "nov.top"), helper.make_node("Neg", ["nov.top"], [out])], [
            *inits, *more]  # fmt: skip
    assert isinstance(module, MahalanobisNovelty)

    def arr(name: str, value: Tensor) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(value.detach().cpu().numpy()), f"nov.{name}")

    inits += [arr("whitenT", module.whiten.T), arr("means", module.means), arr("mean_sq", module.means.square().sum(1)),
              arr("whiten0T", module.whiten0.T), arr("mean0", module.mean0),
              numpy_helper.from_array(np.array(-2.0), "nov.minus2"), numpy_helper.from_array(np.array(0.5), "nov.half")]  # fmt: skip
    d = TensorProto.DOUBLE
    nodes = [
        helper.make_node("Cast", [features], ["nov.z"], to=d),
        helper.make_node("Cast", ["nov.whitenT"], ["nov.wT"], to=d),
        helper.make_node("Cast", ["nov.whiten0T"], ["nov.w0T"], to=d),
        helper.make_node("MatMul", ["nov.z", "nov.wT"], ["nov.a"]),  # (B, D)
        helper.make_node("Mul", ["nov.a", "nov.a"], ["nov.a2"]),
        helper.make_node("ReduceSum", ["nov.a2", "nov.axes1"], ["nov.aa"], keepdims=1),  # (B, 1)
        helper.make_node("Transpose", ["nov.means"], ["nov.meansT"], perm=[1, 0]),
        helper.make_node("MatMul", ["nov.a", "nov.meansT"], ["nov.am"]),  # (B, U)
        helper.make_node("Mul", ["nov.am", "nov.minus2"], ["nov.am2"]),
        helper.make_node("Add", ["nov.aa", "nov.am2"], ["nov.d0"]),
        helper.make_node("Add", ["nov.d0", "nov.mean_sq"], ["nov.d2"]),
        reduce("ReduceMin", "nov.d2", "nov.near"),  # (B,)
        helper.make_node("MatMul", ["nov.z", "nov.w0T"], ["nov.b0"]),
        helper.make_node("Sub", ["nov.b0", "nov.mean0"], ["nov.b"]),
        helper.make_node("Mul", ["nov.b", "nov.b"], ["nov.b2"]),
        reduce("ReduceSum", "nov.b2", "nov.bb"),
        helper.make_node("Sub", ["nov.near", "nov.bb"], ["nov.rel"]),
        helper.make_node("Mul", ["nov.rel", "nov.half"], ["nov.rel2"]),
        helper.make_node("Cast", ["nov.rel2"], [out], to=TensorProto.FLOAT),
    ]
    return nodes, inits
