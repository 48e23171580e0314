"""Per-class generators that never decay: a mixture of probabilistic PCA models per class, fitted once.

A class's model is fitted in closed form on that class's real data the first time the class is learned,
then frozen: learning later classes never touches it, so its memory of the class cannot drift, however
many tasks follow (a generator retrained on its own replay re-learns old classes from samples of samples,
and errors compound). Each class is a mixture of ``components`` Gaussians found by k-means; each Gaussian is
probabilistic PCA (Tipping & Bishop 1999): a mean, ``rank`` principal directions scaled by their variance
above the noise floor, and an isotropic noise variance for the rest. A class gets as many components as its
samples support (at least 4 per principal direction each): too many components for the data overfit, and
replay from them generalises worse (python -m benchmarks.sweeps --only gr:).

The same models are a classifier by themselves (``log_likelihood``: argmax over classes of log p(x | class),
as the ``class_models`` strategy serves it). A PPCA component has covariance C = W W^T + s^2 I; its log density
is computed in the low-rank form (Woodbury identity for C^-1, matrix determinant lemma for log det C), never
forming the D x D matrix. A component whose noise variance is degenerate (s = 0 when the class has fewer samples
than ``rank`` + 1, or data of fewer dimensions than ``rank``) has no density off its subspace, so its variance
is floored at ``variance_floor`` times its mean per-dimension variance (trace(C) / D) before it scores anything.

Privacy: a component is fitted only on at least ``min_samples`` samples, so its mean is an average, never a
sample; the principal directions are eigenvectors of a covariance. The state is plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

VARIANCE_FLOOR = 0.01  # default floor of a component's noise variance, as a share of its mean per-dim variance


def kmeans(x: Tensor, k: int, generator: torch.Generator, iterations: int = 25) -> Tensor:
    """Cluster index of each row of ``x`` (n, D) into ``k`` clusters (k-means++ seeding, Lloyd steps)."""
    n = x.shape[0]
    centres = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values.square()
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=generator)]])
    assign = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iterations):
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def fit_ppca(x: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Probabilistic PCA of ``x`` (n, D): mean (D,), factors (D, rank), noise std (scalar) and the residual
    std of each dimension (D,).

    PPCA's noise is isotropic: the variance the ``rank`` directions leave is spread evenly over all D
    dimensions. The residual std per dimension is what each dimension really has left (its variance less what
    the factors explain): a pixel that never varies (an image's border) gets none. Samples are
    mean + factors @ z + noise * eps with z, eps standard normal, ``noise`` being either; factors are
    zero-padded when the data have fewer than ``rank`` directions.
    """
    n, d = x.shape
    mean = x.mean(0)
    centred = x - mean
    q = min(rank, n - 1, d)
    factors = x.new_zeros(d, rank)
    if q < 1:
        return mean, factors, x.new_zeros(()), x.new_zeros(d)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    eig = s.square() / max(n - 1, 1)  # variance along each principal direction, descending
    rest = d - q
    noise_var = (eig[q:].sum() / rest).clamp_min(0) if rest > 0 else x.new_zeros(())
    factors[:, :q] = vh[:q].T * (eig[:q] - noise_var).clamp_min(0).sqrt()
    explained = factors.square().sum(1)  # (D,)
    residual = (centred.square().sum(0) / max(n - 1, 1) - explained).clamp_min(0)
    return mean, factors, noise_var.sqrt(), residual.sqrt()


class ClassGaussians:
    """One frozen mixture of probabilistic PCA models per class (output unit), on flat vectors of size ``dim``."""

    def __init__(self, dim: int, components: int, rank: int, min_samples: int = 10) -> None:
        self.dim, self.components, self.rank, self.min_samples = dim, components, rank, min_samples
        # unit -> tensors: weights (K,), means (K, D), factors (K, D, rank), noise (K,)
        self.classes: dict[int, dict[str, Tensor]] = {}

    @property
    def units(self) -> list[int]:
        return sorted(self.classes)

    def fit_class(self, unit: int, x: Tensor, generator: torch.Generator) -> None:
        """Fit the model of class ``unit`` on its samples ``x`` (n, D). A class already fitted is kept as is."""
        if unit in self.classes:
            return
        x = x.reshape(x.shape[0], -1).double().cpu()
        # Up to ``components`` clusters, each with enough samples (4 per principal direction) to estimate its
        # directions: a class of 126 samples gets one Gaussian at rank 16, one of 400 gets six.
        k = max(1, min(self.components, x.shape[0] // (4 * self.rank)))
        assign = kmeans(x, k, generator) if k > 1 else torch.zeros(x.shape[0], dtype=torch.long)
        parts = []
        for j in range(k):
            members = x[assign == j]
            if len(members) >= min(self.min_samples, x.shape[0]):  # small clusters are dropped, never kept
                parts.append((len(members), *fit_ppca(members, self.rank)))
        if not parts:  # every cluster was small: one component over the whole class
            parts = [(x.shape[0], *fit_ppca(x, self.rank))]
        counts = torch.tensor([p[0] for p in parts], dtype=torch.float64)
        self.classes[unit] = {
            "weights": (counts / counts.sum()).float(),
            "means": torch.stack([p[1] for p in parts]).float(),
            "factors": torch.stack([p[2] for p in parts]).float(),
            "noise": torch.stack([p[3] for p in parts]).float(),
            "residual": torch.stack([p[4] for p in parts]).float(),  # (K, D)
        }

    def sample(
        self, units: Tensor, generator: torch.Generator, noise_scale: float = 1.0, noise: str = "isotropic"
    ) -> Tensor:
        """(B,) units -> (B, D) samples on ``units``' device. Every unit must have been fitted. ``noise``:
        "isotropic" (PPCA's), "residual" (each dimension's own residual std; a model saved before it existed
        falls back to isotropic) or "none"."""
        device = units.device
        out = torch.empty(units.shape[0], self.dim, device=device)
        for unit in torch.unique(units).tolist():
            rows = torch.nonzero(units == unit).flatten()
            m = {k: v.to(device) for k, v in self.classes[int(unit)].items()}
            comp = torch.multinomial(m["weights"], len(rows), replacement=True, generator=generator)
            z = torch.randn(len(rows), self.rank, 1, device=device, generator=generator)
            eps = torch.randn(len(rows), self.dim, device=device, generator=generator)
            x = m["means"][comp] + (m["factors"][comp] @ z).squeeze(-1)
            if noise == "residual" and "residual" in m:
                std = m["residual"][comp]  # (n, D)
            elif noise == "none":
                std = torch.zeros_like(x)
            else:
                std = m["noise"][comp, None].expand_as(x)
            out[rows] = x + noise_scale * std * eps
        return out

    def component_terms(self, unit: int, variance_floor: float = VARIANCE_FLOOR) -> dict[str, Tensor]:
        """Float64 terms of the log density of each of class ``unit``'s K components, for x of size D:

        log N(x; mu, W W^T + v I) = -0.5 * (|x - mu|^2 / v - |G (x - mu)|^2) + const

        with v the floored noise variance, G = L^-1 W^T / sqrt(v) (rank, D) where L L^T = M = v I + W^T W (so
        |G d|^2 = d^T W M^-1 W^T d / v, the Woodbury correction) and const = log weight - 0.5 * (log det C +
        D log 2 pi), log det C = (D - rank) log v + log det M. Returns means (K, D), proj G (K, rank, D),
        inv_var 1/v (K,) and const (K,).
        """
        m = self.classes[unit]
        means, w = m["means"].double(), m["factors"].double()  # (K, D), (K, D, r)
        d, r = w.shape[1], w.shape[2]
        s2 = m["noise"].double().square()
        floor = variance_floor * (w.square().sum((1, 2)) + d * s2) / d  # a share of trace(C) / D
        v = torch.maximum(s2, floor)
        if bool((v <= 0).any()):  # every sample of a component identical: no spread at all
            v = torch.where(v > 0, v, torch.full_like(v, 1e-12))
        eye = torch.eye(r, dtype=torch.float64)
        chol = torch.linalg.cholesky(v[:, None, None] * eye + w.transpose(1, 2) @ w)  # (K, r, r)
        proj = torch.linalg.solve_triangular(chol, w.transpose(1, 2), upper=False) / v.sqrt()[:, None, None]
        logdet = (d - r) * v.log() + 2 * chol.diagonal(dim1=1, dim2=2).log().sum(1)
        const = m["weights"].double().log() - 0.5 * (logdet + d * math.log(2 * math.pi))
        return {"means": means, "proj": proj, "inv_var": 1.0 / v, "const": const}

    def log_likelihood(self, x: Tensor, variance_floor: float = VARIANCE_FLOOR) -> Tensor:
        """(N, D) -> (N, units) float64 log p(x | class) of every fitted class, in ``units`` order: the log
        of the mixture density (logsumexp over components of log weight + log Gaussian)."""
        x = x.reshape(x.shape[0], -1).double().cpu()
        out = []
        for unit in self.units:
            t = self.component_terms(unit, variance_floor)
            delta = x[:, None, :] - t["means"][None]  # (N, K, D)
            sq = delta.square().sum(-1)  # (N, K)
            low = torch.einsum("krd,nkd->nkr", t["proj"], delta).square().sum(-1)  # (N, K)
            out.append(torch.logsumexp(t["const"] - 0.5 * (sq * t["inv_var"] - low), dim=1))
        return torch.stack(out, 1) if out else x.new_zeros(x.shape[0], 0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "components": self.components,
            "rank": self.rank,
            "min_samples": self.min_samples,
            "classes": {str(u): {k: v.clone() for k, v in m.items()} for u, m in self.classes.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ClassGaussians:
        out = cls(int(state["dim"]), int(state["components"]), int(state["rank"]), int(state["min_samples"]))
        out.classes = {int(u): dict(m) for u, m in state["classes"].items()}
        return out
