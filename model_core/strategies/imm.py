"""Incremental moment matching, IMM (Lee et al. 2017).

The new task trains from the old weights (the paper's weight transfer; ``l2`` adds its L2 pull toward them),
then the old and new solutions are merged once training has finished:

- ``mode="mean"``: theta = a theta_old + (1 - a) theta_new;
- ``mode="mode"``: theta = (a F_old theta_old + (1 - a) F_new theta_new) / (a F_old + (1 - a) F_new), per
  parameter, with each solution's diagonal empirical Fisher F (the mean of squared per-sample gradients).

a is the share of the tasks that are old (tasks seen before / all tasks), the paper's uniform weighting, so the
merge after task k is the running average of k solutions. theta_old is the parent version's weights (already in
the bundle, as online EWC's anchor); F_old is kept as the same running average of the tasks' Fishers. A head
block this task added has no old value and keeps its new one; where both Fishers are zero the mean is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.strategies.base import Batch, Strategy, TrainContext, register_strategy
from model_core.strategies.importance import (
    masked_log_softmax,
    model_labelled,
    per_sample_importance,
    previous_params,
    subsample,
)
from model_core.strategy_specs import SPECS


def merge(old: Tensor, new: Tensor, a: float, f_old: Tensor | None = None, f_new: Tensor | None = None) -> Tensor:
    """Mean-IMM without Fishers; mode-IMM with them (the mean where both are zero)."""
    mean = a * old + (1 - a) * new
    if f_old is None or f_new is None:
        return mean
    weight = a * f_old + (1 - a) * f_new
    mode = (a * f_old * old + (1 - a) * f_new * new) / weight.clamp_min(torch.finfo(weight.dtype).tiny)
    return torch.where(weight > 0, mode, mean)


def diagonal_fisher(ctx: TrainContext, samples: int, kind: str) -> dict[str, Tensor]:
    """Diagonal Fisher of the trained model on (at most ``samples`` of) this experience's data: "empirical" with
    the data's labels, "true" with labels drawn from the model (as EWC's default)."""
    data = subsample(ctx, ctx.data, samples)
    if kind == "true":
        data = model_labelled(ctx, data)

    def nll(logits: Tensor, mask: Tensor, y: Tensor) -> Tensor:
        return -masked_log_softmax(logits, mask).gather(1, y[:, None]).sum()

    return per_sample_importance(ctx, data, nll, "square")


@register_strategy
class IMM(Strategy):
    spec = SPECS["imm"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.fisher: dict[str, Tensor] = {}  # running average of the merged tasks' Fishers (mode only)
        self.tasks = 0  # tasks merged so far

    def penalty(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        l2 = float(self.params["l2"])
        if l2 == 0 or ctx.previous is None:
            return logits.new_zeros((), dtype=torch.float32)
        old = previous_params(ctx)
        total = sum(((p - old[k]).square().sum() for k, p in ctx.model.named_parameters() if k in old),
                    torch.zeros((), device=ctx.device))  # fmt: skip
        return l2 * total

    def after_experience(self, ctx: TrainContext) -> None:
        mode = self.params["mode"] == "mode"
        f_new = diagonal_fisher(ctx, int(self.params["fisher_samples"]), self.params["fisher"]) if mode else {}
        old_tasks = self.old_tasks(ctx)
        if ctx.previous is not None and old_tasks > 0:
            self.merge_into(ctx, old_tasks / (old_tasks + 1), f_new)
        if mode:
            self.fisher = self.averaged_fisher(f_new, old_tasks)
        self.tasks = old_tasks + 1

    def old_tasks(self, ctx: TrainContext) -> int:
        """Tasks the parent version has learnt: this strategy's count, else (a parent trained by another
        strategy) the tasks that introduced its units."""
        if ctx.previous is None:
            return 0
        return self.tasks or len(torch.unique(ctx.unit_task[: len(ctx.old_units)]))

    @torch.no_grad()
    def merge_into(self, ctx: TrainContext, a: float, f_new: dict[str, Tensor]) -> None:
        """Replace the trained weights by their merge with the parent version's, in place."""
        old = previous_params(ctx)
        for name, p in ctx.model.named_parameters():
            if name not in old:
                continue  # a head block this task added: no old value
            f_old = self.fisher.get(name)
            fo = None if f_old is None or name not in f_new else f_old.to(p)
            fn = None if fo is None else f_new[name].to(p)
            p.copy_(merge(old[name].to(p), p.detach().clone(), a, fo, fn))

    def averaged_fisher(self, f_new: dict[str, Tensor], old_tasks: int) -> dict[str, Tensor]:
        """F <- a F_old + (1 - a) F_new with a = old_tasks / (old_tasks + 1); a new block starts from F_new."""
        a = old_tasks / (old_tasks + 1)
        return {k: a * self.fisher[k] + (1 - a) * f if k in self.fisher else f for k, f in f_new.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.params["mode"], "fisher": self.fisher, "tasks": torch.tensor(self.tasks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.fisher = dict(state["fisher"])
        self.tasks = int(state["tasks"])
