"""Gradient episodic memory, GEM (Lopez-Paz & Ranzato 2017).

Same memory as ``agem`` and ``replay`` (a class-balanced exemplar buffer), grouped by the task that introduced
each class. Each step takes one gradient g_t on every old task's memory; when the step's gradient g conflicts
with any of them, it is replaced by the closest z (in L2) with g_t . z >= 0 for every t. That quadratic program
is solved in its dual, over one multiplier per old task (GEM's own formulation, with its ``margin``):
min_v 1/2 v'(G G')v + (G g)'v subject to v >= margin, then z = g + G'v. The dual is tiny (tasks x tasks), so a
projected-gradient loop in torch solves it, and the support it finds is then solved exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model_core.strategies.agem import AGEM, flat_grad, memory_rows, reference_gradient, trainable
from model_core.strategies.base import TrainContext, register_strategy
from model_core.strategy_specs import SPECS

DUAL_ITERATIONS = 500  # projected-gradient steps at most; it stops as soon as the constraints hold


def solve_dual(gram: Tensor, q: Tensor, margin: float) -> Tensor:
    """argmin over v >= margin of 1/2 v' gram v + q'v (float64, tasks x tasks), by projected gradient, then an
    exact solve on the multipliers above the margin (a better answer whenever it keeps them there)."""
    step = 1.0 / float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-30))
    v = torch.full_like(q, margin)
    for i in range(DUAL_ITERATIONS):
        v = (v - step * (gram @ v + q)).clamp_min(margin)
        if i % 10 == 9 and bool((gram @ v + q >= -1e-12 * gram.diagonal().max()).all()):
            break
    free = v > margin
    if bool(free.any()):
        exact = v.clone()
        rhs = -(q[free] + gram[free][:, ~free] @ v[~free])
        exact[free] = torch.linalg.lstsq(gram[free][:, free], rhs[:, None]).solution.flatten()
        if bool((exact >= margin).all()) and bool((gram @ exact + q)[~free].ge(-1e-9 * gram.diagonal().max()).all()):
            v = exact
    return v


def project_gem(g: Tensor, old: Tensor, margin: float = 0.0) -> Tensor:
    """g (P,) unchanged when it agrees with every row of ``old`` (T, P); else the GEM projection."""
    if bool((old @ g >= 0).all()):
        return g
    G = old.double()
    v = solve_dual(G @ G.T, G @ g.double(), margin)
    return (g.double() + G.T @ v).to(g.dtype)


@register_strategy
class GEM(AGEM):
    spec = SPECS["gem"]

    def before_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        if len(self.buffer) == 0:
            return
        assert self.buffer.x is not None
        params = trainable(net)
        task = ctx.unit_task.cpu()[self.buffer.y]
        refs = []
        for t in torch.unique(task):
            rows = task == t
            x, y = memory_rows(self.buffer.x[rows], self.buffer.y[rows], int(self.params["memory_batch"]), ctx.cpu_rng)
            refs.append(reference_gradient(ctx, net, params, x.to(ctx.device), y.to(ctx.device)))
        g = flat_grad(params)
        projected = project_gem(g, torch.stack(refs), float(self.params["margin"]))
        self._apply(projected is not g, params, projected)
