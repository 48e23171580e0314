"""Generators for generative replay."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.config import InputSpec


class ConditionalVAE(nn.Module):
    """A class-conditional VAE on flattened inputs (Kingma et al. 2014, M2 without the classifier).

    Images in [0, 1] use a Bernoulli likelihood (binary cross-entropy on logits); vectors are
    standardised with statistics fixed at the first fit and use a unit-variance Gaussian likelihood.
    The class embedding grows with the classifier's output units; a class is one unit index.
    """

    x_mean: Tensor  # (D,) buffers: standardisation of vector inputs
    x_std: Tensor

    def __init__(
        self, input: InputSpec, n_classes: int = 0, latent_dim: int = 32, hidden: int = 256, embed_dim: int = 32
    ) -> None:
        super().__init__()
        self.input = input
        self.latent_dim = latent_dim
        d = input.numel
        self.embed = nn.Embedding(max(n_classes, 1), embed_dim)
        self.n_classes = n_classes
        self.encoder = nn.Sequential(nn.Linear(d + embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)  # (mu, log variance)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + embed_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, d),
        )
        self.register_buffer("x_mean", torch.zeros(d))  # vectors only; identity for images
        self.register_buffer("x_std", torch.ones(d))

    @property
    def bernoulli(self) -> bool:
        return self.input.kind == "image"

    def expand_classes(self, n_classes: int) -> None:
        """Grow the class embedding to ``n_classes`` rows, keeping the existing rows."""
        if n_classes <= self.n_classes:
            return
        old = self.embed
        grown = nn.Embedding(n_classes, old.embedding_dim).to(old.weight.device)
        with torch.no_grad():
            grown.weight[: self.n_classes] = old.weight[: self.n_classes]
        self.embed, self.n_classes = grown, n_classes

    def set_standardisation(self, x: Tensor) -> None:
        if not self.bernoulli:
            flat = x.reshape(x.shape[0], -1).float()
            self.x_mean.copy_(flat.mean(0))
            self.x_std.copy_(flat.std(0).clamp_min(1e-3))

    def loss(self, x: Tensor, y: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Negative ELBO per the row weights (summing to 1): (total, reconstruction, KL)."""
        flat = (x.reshape(x.shape[0], -1) - self.x_mean) / self.x_std  # (B, D)
        e = self.embed(y)
        mu, logvar = self.to_stats(self.encoder(torch.cat([flat, e], 1))).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        out = self.decoder(torch.cat([z, e], 1))
        if self.bernoulli:
            rec = F.binary_cross_entropy_with_logits(out, flat, reduction="none").sum(1)
        else:
            rec = 0.5 * (out - flat).square().sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
        rec_w, kl_w = (weight * rec).sum(), (weight * kl).sum()
        return rec_w + kl_w, rec_w, kl_w

    @torch.no_grad()
    def sample(self, y: Tensor, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Decoder means for classes ``y`` (B,): (B, *input_shape) in the input's own space."""
        z = torch.randn(y.shape[0], self.latent_dim, device=y.device, generator=generator) * temperature
        out = self.decoder(torch.cat([z, self.embed(y)], 1))
        out = torch.sigmoid(out) if self.bernoulli else out * self.x_std + self.x_mean
        return out.reshape(y.shape[0], *self.input.shape)
