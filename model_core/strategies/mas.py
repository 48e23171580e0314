"""Memory Aware Synapses (Aljundi et al. 2018): importance is the mean absolute gradient of the squared
L2 norm of the outputs, which needs no labels. Penalty: lambda * sum_i Omega_i (theta_i - theta*_i)^2,
anchored at the parent version's weights; importances of successive experiences are summed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.strategies.base import Batch, Strategy, TrainContext, register_strategy
from model_core.strategies.importance import per_sample_importance, previous_params, quadratic_penalty, subsample
from model_core.strategy_specs import SPECS


@register_strategy
class MAS(Strategy):
    spec = SPECS["mas"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.importance: dict[str, Tensor] = {}

    def penalty(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        if not self.importance or ctx.previous is None:
            return logits.new_zeros((), dtype=torch.float32)
        return float(self.params["mas_lambda"]) * quadratic_penalty(ctx, self.importance, previous_params(ctx))

    def after_experience(self, ctx: TrainContext) -> None:
        data = subsample(ctx, ctx.data, int(self.params["importance_samples"]))

        def squared_norm(logits: Tensor, mask: Tensor, y: Tensor) -> Tensor:
            return (logits * mask).square().sum()

        omega = per_sample_importance(ctx, data, squared_norm, "abs")
        # accumulate over experiences; a head block new since then starts from its new importance
        self.importance = {k: o + self.importance[k] if k in self.importance else o for k, o in omega.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.importance = dict(state["importance"])
