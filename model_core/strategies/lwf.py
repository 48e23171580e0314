"""Learning without Forgetting (Li & Hoiem 2017): distil the previous model on the old output units.

Penalty: alpha * T^2 * sum_g KL(softmax(teacher_g / T) || softmax(student_g / T)), one softmax per group
of old units (all old units in class-incremental mode; each old task's head in task-incremental mode).
The teacher is the parent version's network; on the first experience there is none and the penalty is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model_core.strategies.base import Batch, Strategy, TrainContext, register_strategy
from model_core.strategy_specs import SPECS


def distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over rows."""
    t = temperature
    return (
        F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean")
        * t
        * t
    )


def distill_old_units(ctx: TrainContext, x: Tensor, logits: Tensor, alpha: float, temperature: float) -> Tensor:
    """alpha * distillation of the previous model on ``x`` over each group of old units.

    0 when ``alpha`` is 0 or there is no previous model (the first experience).
    """
    if alpha == 0 or ctx.previous is None:
        return logits.new_zeros((), dtype=torch.float32)
    with torch.no_grad(), ctx.autocast():
        teacher = ctx.previous(x).float()  # (B, U_old)
    total = torch.zeros((), device=ctx.device)
    for units in ctx.old_unit_groups():
        total = total + distillation(logits.float()[:, units], teacher[:, units], temperature)
    return alpha * total


@register_strategy
class LwF(Strategy):
    spec = SPECS["lwf"]

    def penalty(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        alpha, temperature = float(self.params["alpha"]), float(self.params["temperature"])
        return distill_old_units(ctx, batch.x, logits, alpha, temperature)
