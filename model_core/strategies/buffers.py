"""A class-balanced exemplar buffer with a per-class budget (and an optional total budget)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from model_core.strategies.base import TrainContext


def herding_order(features: Tensor, n: int) -> Tensor:
    """Indices of ``n`` samples whose running mean best tracks the class mean (Rebuffi et al. 2017).

    features (N, D), L2-normalised inside; returns (min(n, N),) indices in selection order.
    """
    f = torch.nn.functional.normalize(features.float(), dim=1)
    target = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(target)
    available = torch.ones(len(f), dtype=torch.bool)
    for k in range(1, min(n, len(f)) + 1):
        # distance of the mean after adding each candidate to the class mean
        dist = (target - (running + f) / k).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += f[i]
    return torch.tensor(chosen, dtype=torch.long)


# per_class None: a class keeps this share of its training samples, and at least MIN_PER_CLASS (all, when fewer)
SHARE_PER_CLASS = 1 / 3
MIN_PER_CLASS = 20


class ClassBalancedBuffer:
    """Keeps at most ``per_class`` samples of every unit (None: a third of the class's samples when it is first
    offered, at least 20); with ``max_total`` the per-class share shrinks as classes are added so that the
    buffer never holds more than ``max_total`` samples.

    Each class's exemplars are stored in priority order (herding or random), so shrinking a class keeps
    its best exemplars.
    """

    def __init__(self, per_class: int | None, max_total: int | None = None) -> None:
        if (per_class is not None and per_class < 1) or (max_total is not None and max_total < 1):
            raise ValueError("buffer budgets must be >= 1")
        self.per_class = per_class
        self.max_total = max_total
        self.x: Tensor | None = None  # (M, *input_shape)
        self.y: Tensor = torch.zeros(0, dtype=torch.long)  # (M,) output unit of each exemplar

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def counts(self) -> dict[int, int]:
        units, counts = torch.unique(self.y, return_counts=True)
        return {int(u): int(c) for u, c in zip(units, counts, strict=True)}

    def budget(self, n_classes: int, offered: int = 0, held: int = 0) -> int:
        """Exemplars a class may keep, given how many it ``offered`` now and already ``held``."""
        own = self.per_class
        if own is None:  # from the data: what the class brought the first time
            own = held or max(MIN_PER_CLASS, math.ceil(offered * SHARE_PER_CLASS))
        if self.max_total is None:
            return own
        return max(1, min(own, self.max_total // max(n_classes, 1)))

    def state_dict(self) -> dict[str, Any]:
        """The kept samples as plain tensors ({} while empty)."""
        return {} if self.x is None else {"x": self.x, "y": self.y}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.x, self.y = state["x"], state["y"].long()

    def add(self, x: Tensor, y: Tensor, generator: torch.Generator, features: Tensor | None = None) -> None:
        """Offer samples. Classes new to the buffer keep their herding-ordered (with ``features``) or
        random selection; a class already present keeps its old exemplars first."""
        x, y = x.detach().cpu(), y.detach().cpu().long()
        classes = sorted(set(self.y.tolist()) | set(y.tolist()))
        xs, ys = [], []
        for c in classes:
            old = self.x[self.y == c] if self.x is not None else x[:0]
            idx = torch.nonzero(y == c).flatten()
            per = self.budget(len(classes), len(idx), len(old))
            if len(idx) and len(old) < per:
                if features is not None:
                    order = idx[herding_order(features[idx], per - len(old))]
                else:
                    order = idx[torch.randperm(len(idx), generator=generator)[: per - len(old)]]
                old = torch.cat([old, x[order]])
            xs.append(old[:per])
            ys.append(torch.full((len(xs[-1]),), c, dtype=torch.long))
        self.x, self.y = torch.cat(xs), torch.cat(ys)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` exemplars drawn uniformly with replacement (class-balanced, as the buffer is)."""
        assert self.x is not None
        idx = torch.randint(len(self), (n,), generator=generator)
        return self.x[idx], self.y[idx]


def remember(buffer: ClassBalancedBuffer, ctx: TrainContext, selection: str) -> None:
    """Add this experience's samples to ``buffer``: by herding on the model's features, or at random."""
    features = None
    if selection == "herding":
        with torch.no_grad():
            features = torch.cat(
                [ctx.model.forward_features(mb.x).float().cpu() for mb in ctx.iterate_minibatches(ctx.data, 512)]
            )
    buffer.add(ctx.data.x, ctx.data.y, ctx.cpu_rng, features)
