"""An exemplar-free analytic head on frozen features (as analytic class-incremental learning and RanPAC do).

The head is the ridge-regression solution from the frozen backbone's features to one-hot class targets. It
depends on the data only through two running sums, the feature Gram matrix G = sum f f^T and the
feature-target matrix C = sum f y^T (f with a constant 1 appended for the bias), so learning task after task
gives exactly the head that joint training on all the data would give, with no sample kept and nothing to
forget. The ridge strength is chosen for each solve by generalised cross-validation, which needs only the
same sums. No gradient steps are taken: ``iterations`` is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from model_core.strategies.base import Strategy, TrainContext, register_strategy
from model_core.strategy_specs import SPECS

RIDGE_GRID = torch.logspace(-6, 2, 33, dtype=torch.float64)  # ridge / (mean eigenvalue of G)


def solve_ridge(gram: Tensor, cross: Tensor, n: int, relative: float | None = None) -> tuple[Tensor, float]:
    """Ridge weights (D, U) from G (D, D), C (D, U) and the sample count; the ridge (relative to the mean
    eigenvalue of G) is ``relative`` or, when None, the grid value with the lowest GCV score."""
    s, v = torch.linalg.eigh(gram)
    s = s.clamp_min(0)
    vc = v.T @ cross  # (D, U)
    scale = float(s.mean()) or 1.0
    y_sq = float(n)  # sum of squared one-hot targets
    best: tuple[float, float] | None = None
    for rel in [relative] if relative is not None else RIDGE_GRID.tolist():
        lam = rel * scale
        coef = vc / (s + lam)[:, None]  # the weights in G's eigenbasis
        # residual sum of squares from the sums alone: |Y|^2 - 2 tr(W^T C) + tr(W^T G W)
        rss = y_sq - 2 * float((coef * vc).sum()) + float((coef.square() * s[:, None]).sum())
        dof = float((s / (s + lam)).sum())
        score = n * max(rss, 0.0) / max(n - dof, 1e-9) ** 2
        if best is None or score < best[0]:
            best = (score, rel)
    assert best is not None
    lam = best[1] * scale
    return v @ (vc / (s + lam)[:, None]), best[1]


@register_strategy
class Analytic(Strategy):
    spec = SPECS["analytic"]
    gradient_steps = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.gram: Tensor | None = None  # (D+1, D+1) float64
        self.cross: Tensor | None = None  # (D+1, U) float64
        self.count = 0
        self.chosen_ridge: float | None = None

    def before_experience(self, ctx: TrainContext) -> None:
        if ctx.replays_inputs:
            raise ValueError(
                "strategy 'analytic' needs a frozen pretrained backbone (e.g. timm/efficientnet_lite0, train "
                "'frozen'); this classifier trains its backbone"
            )

    def after_experience(self, ctx: TrainContext) -> None:
        f = ctx.data.x.double()
        f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)  # (N, D+1): the bias as a constant feature
        y = torch.zeros(len(f), ctx.num_units, dtype=torch.float64)
        y[torch.arange(len(f)), ctx.data.y] = 1.0
        if self.gram is None:
            self.gram, self.cross = f.T @ f, f.T @ y
        else:
            assert self.cross is not None
            grown = torch.zeros(f.shape[1], ctx.num_units, dtype=torch.float64)
            grown[:, : self.cross.shape[1]] = self.cross
            self.gram, self.cross = self.gram + f.T @ f, grown + f.T @ y
        self.count += len(f)
        ridge = self.params["ridge"]
        assert self.cross is not None
        weights, self.chosen_ridge = solve_ridge(
            self.gram, self.cross, self.count, None if ridge is None else float(ridge)
        )
        start = 0
        with torch.no_grad():
            for head in ctx.model.heads:
                linear = cast(nn.Linear, head)
                block = weights[:, start : start + linear.out_features].T.to(linear.weight)
                linear.weight.copy_(block[:, :-1])
                linear.bias.copy_(block[:, -1])
                start += linear.out_features
        ctx.report("train", 1, 1, ridge=float(self.chosen_ridge))

    def diagnostics(self) -> dict[str, Any]:
        return {} if self.chosen_ridge is None else {"ridge": self.chosen_ridge}

    def state_dict(self) -> dict[str, Any]:
        if self.gram is None:
            return {}
        return {"gram": self.gram.clone(), "cross": self.cross, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.gram, self.cross, self.count = state["gram"], state["cross"], int(state["count"])
