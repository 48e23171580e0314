"""Class models from running sufficient statistics, each class's covariance shrunk toward the pooled one.

Each class keeps three running sums, merged exactly whatever order or batching its samples came in (Chan,
Golub & LeVeque's pairwise update): its sample count n_c, its mean mu_c (D,) and its centred scatter
M_c = sum (x - mu_c)(x - mu_c)^T (D, D), all float64. Learning more samples of a class merges them into its
sums; the sums after any sequence of batches equal the sums of all the samples at once (to float64
rounding), so a class model never depends on how its samples were split into jobs.

A class's Gaussian has the mean mu_c and the covariance of regularised discriminant analysis (Friedman 1989):

    S_c = (1 - a_c) M_c / (n_c - 1) + a_c P,    P = sum_c M_c / (N - C)   (the pooled within-class covariance)

``a_c = 0`` is the class's own covariance (quadratic discriminant analysis), ``a_c = 1`` the pooled one for
every class (linear discriminant analysis). With a pseudo-count k (a normal-inverse-Wishart prior centred on
P), ``a_c = k / (k + n_c)`` (``ClassStats.shrinkage``); ``class_models`` gives every class one share instead,
``k / (k + median n_c)``, so classes learnt from different counts are not shaped unequally (its module doc).
The pooled part grows with every class learnt and every sample added, so every class's S_c (a_c > 0) moves a
little with every job, while its mean and its own scatter change only when samples of that class are learnt.

For serving, S_c is reduced to probabilistic PCA at ``rank`` (its top eigenvectors scaled by their variance
above the mean of the other eigenvalues, the noise variance), so a class model is a one-component
``ClassGaussians`` entry and ``GaussianHead`` serves it unchanged. Memory: a class's scatter is D^2 float64
values, stored as its upper triangle: D (D + 1) / 2 * 8 bytes (64 values: 17 KB; 384: 0.6 MB; 784: 2.5 MB;
1,280: 6.6 MB; 4,096: 67 MB).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.networks.class_gaussians import ClassGaussians


class ClassStats:
    """Count, mean and centred scatter of each class (output unit) over flat vectors of size ``dim``."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count: dict[int, int] = {}
        self.mean: dict[int, Tensor] = {}  # (D,) float64
        self.scatter: dict[int, Tensor] = {}  # (D, D) float64

    @property
    def units(self) -> list[int]:
        return sorted(self.count)

    def add(self, unit: int, x: Tensor) -> None:
        """Merge samples ``x`` (n, D) of class ``unit`` into its sums (exact pairwise update)."""
        x = x.reshape(x.shape[0], -1).double().cpu()
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        scatter_b = (scatter_b + scatter_b.T) / 2  # exactly symmetric, so its stored upper triangle restores it
        if unit not in self.count:
            self.count[unit], self.mean[unit], self.scatter[unit] = n_b, mean_b, scatter_b
            return
        n_a, mean_a = self.count[unit], self.mean[unit]
        n = n_a + n_b
        delta = mean_b - mean_a
        self.scatter[unit] = self.scatter[unit] + scatter_b + torch.outer(delta, delta) * (n_a * n_b / n)  # symmetric
        self.mean[unit] = mean_a + delta * (n_b / n)
        self.count[unit] = n

    def copy(self) -> ClassStats:
        out = ClassStats(self.dim)
        out.count, out.mean, out.scatter = dict(self.count), dict(self.mean), dict(self.scatter)
        return out

    def pooled(self) -> Tensor:
        """(D, D) pooled within-class covariance: every class's scatter over N - C degrees of freedom."""
        total = sum(self.count.values())
        dof = max(total - len(self.count), 1)
        return torch.stack([self.scatter[u] for u in self.units]).sum(0) / dof

    def covariance(self, unit: int, shrinkage: float, pooled: Tensor | None = None) -> Tensor:
        """(D, D) class covariance shrunk by ``shrinkage`` (0: its own, 1: the pooled one) toward ``pooled``."""
        pooled = self.pooled() if pooled is None else pooled
        if shrinkage >= 1.0:
            return pooled
        own = self.scatter[unit] / max(self.count[unit] - 1, 1)
        return own if shrinkage <= 0.0 else (1.0 - shrinkage) * own + shrinkage * pooled

    def shrinkage(self, unit: int, pseudo_count: float) -> float:
        """a_c = k / (k + n_c): the pooled covariance's share in the class's, from a prior of k samples."""
        if pseudo_count == float("inf"):
            return 1.0
        return pseudo_count / (pseudo_count + self.count[unit])

    def state_dict(self) -> dict[str, Any]:
        rows, cols = torch.triu_indices(self.dim, self.dim)
        return {"dim": self.dim,
                "classes": {str(u): {"count": self.count[u], "mean": self.mean[u].clone(),
                                     "scatter": self.scatter[u][rows, cols].clone()} for u in self.units}}  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ClassStats:
        out = cls(int(state["dim"]))
        rows, cols = torch.triu_indices(out.dim, out.dim)
        for u, m in state["classes"].items():
            full = torch.zeros(out.dim, out.dim, dtype=torch.float64)
            full[rows, cols] = m["scatter"]
            full[cols, rows] = m["scatter"]
            out.count[int(u)], out.mean[int(u)], out.scatter[int(u)] = int(m["count"]), m["mean"], full
        return out


# ``span_basis`` works in the samples' span where it has at most this share of D dimensions: a fit then costs one D-wide
# decomposition and one k-wide one per class and shrinkage (k^3 / D^3 = 0.42 of a D-wide one at the share)
SUBSPACE_SHARE = 0.75


def span_basis(stats: ClassStats) -> Tensor | None:
    """An orthonormal basis (D, k) of the span of every class's scatter, where that span is small: with N samples
    in C classes it has at most N - C dimensions, and every class covariance, pooled or shrunk, lies in it. Then
    ``eigen(cov, basis)`` decomposes k x k matrices instead of D x D ones (80 photos' features in 1,280 values:
    one 1,280-wide decomposition per fit instead of one per class and shrinkage). None where the span may be
    large (N - C over ``SUBSPACE_SHARE`` of D): there the full decompositions are no dearer."""
    dof = sum(stats.count.values()) - len(stats.count)
    if not stats.units or dof > SUBSPACE_SHARE * stats.dim:
        return None
    values, vectors = torch.linalg.eigh(torch.stack([stats.scatter[u] for u in stats.units]).sum(0))
    keep = values > values.max().clamp_min(0) * stats.dim * torch.finfo(values.dtype).eps
    basis: Tensor = vectors[:, keep]
    return basis


def eigen(cov: Tensor, basis: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues (D,) descending, clamped at 0, and eigenvectors (D, D) as columns. With ``basis`` (D, k), an
    orthonormal basis of a span holding ``cov``'s columns (``span_basis``), the decomposition is computed in it:
    the same top k values and directions (up to rounding and each direction's sign), D - k zero values, and zero
    columns for their directions (a PPCA entry scales those by their variance above the noise: zero)."""
    if basis is None:
        values, vectors = torch.linalg.eigh(cov)
        return values.flip(0).clamp_min(0), vectors.flip(1)
    d, k = basis.shape
    small_values, small_vectors = torch.linalg.eigh(basis.T @ cov @ basis)
    values = torch.zeros(d, dtype=cov.dtype)
    values[:k] = small_values.flip(0).clamp_min(0)
    vectors = torch.zeros(d, d, dtype=cov.dtype)
    vectors[:, :k] = basis @ small_vectors.flip(1)
    return values, vectors


def ppca_entry(mean: Tensor, values: Tensor, vectors: Tensor, rank: int) -> dict[str, Tensor]:
    """A one-component ``ClassGaussians`` entry: probabilistic PCA at ``rank`` of the covariance whose
    eigendecomposition is (``values``, ``vectors``): the top directions scaled by their variance above the noise
    variance, the mean of the other eigenvalues (Tipping & Bishop 1999, from a covariance instead of samples)."""
    d = mean.shape[0]
    q = min(rank, d - 1)
    noise_var = values[q:].mean() if q < d else values.new_zeros(())
    factors = torch.zeros(d, rank, dtype=torch.float64)
    factors[:, :q] = vectors[:, :q] * (values[:q] - noise_var).clamp_min(0).sqrt()
    return {"weights": torch.ones(1), "means": mean[None].float(), "factors": factors[None].float(),
            "noise": noise_var.sqrt()[None].float(), "residual": torch.zeros(1, d)}  # fmt: skip


def class_gaussians(stats: ClassStats, rank: int, amounts: Mapping[int, float]) -> ClassGaussians:
    """One PPCA Gaussian per class of ``stats``, its covariance shrunk by ``amounts[unit]`` toward the pooled
    one, as ``ClassGaussians`` (scoring and serving)."""
    pooled, basis = stats.pooled(), span_basis(stats)
    out = ClassGaussians(stats.dim, 1, rank, 1)
    for unit in stats.units:
        out.classes[unit] = ppca_entry(stats.mean[unit], *eigen(stats.covariance(unit, amounts[unit], pooled), basis),
                                       rank)  # fmt: skip
    return out
