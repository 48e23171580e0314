"""A fixed random-feature expansion before a linear head (RanPAC, McDonnell et al. 2023).

Ridge regression on a frozen encoder's features is linear in them; the classes of sentence embeddings or of
frozen photo features are not linearly separable enough for that to reach a logistic regression. A fixed,
seeded random projection to ``width`` values through a ReLU, h = relu(W f + b), makes the ridge head a
kernel-like classifier while everything it learns stays in two running sums (``model_core.strategies.analytic``):
the expansion itself is never trained.

In the classifier, the first ``ExpandedLinear`` block holds the expansion, and every ``ExpandedLinear`` block
reads its output (computed once per forward pass); the exported graph computes it once too, inside the head
part (``model_core.export_frozen``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class RandomFeatures(nn.Module):
    """(B, D) -> (B, width): relu(f W^T + b), W (width, D) ~ N(0, 1 / D), b ~ N(0, 1 / D) (as buffers: never trained)."""

    weight: Tensor
    bias: Tensor

    def __init__(self, dim: int, width: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scale = 1.0 / math.sqrt(dim)
        self.register_buffer("weight", torch.randn(width, dim, generator=g) * scale)
        self.register_buffer("bias", torch.randn(width, generator=g) * scale)
        self.dim, self.width = dim, width

    def forward(self, f: Tensor) -> Tensor:
        return torch.relu(nn.functional.linear(f, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, width={self.width}"


class ExpandedLinear(nn.Linear):
    """A linear head block over the random features; the first such block of a classifier holds the expansion."""

    def __init__(self, width: int, out_features: int, expansion: RandomFeatures | None = None) -> None:
        super().__init__(width, out_features)
        self.expansion = expansion


def expansion_of(heads: nn.ModuleList) -> RandomFeatures | None:
    """The classifier's random-feature expansion (held by its first ``ExpandedLinear`` block), or None."""
    for head in heads:
        if isinstance(head, ExpandedLinear) and head.expansion is not None:
            return head.expansion
    return None
