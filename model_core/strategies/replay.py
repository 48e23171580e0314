"""Experience replay from a class-balanced exemplar buffer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from model_core.strategies.base import Batch, Strategy, TrainContext, mix, register_strategy
from model_core.strategies.buffers import ClassBalancedBuffer, remember
from model_core.strategies.lwf import distill_old_units
from model_core.strategy_specs import SPECS


@register_strategy
class Replay(Strategy):
    spec = SPECS["replay"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["selection"] not in ("herding", "random"):
            raise ValueError("replay selection must be 'herding' or 'random'")

        per_class = self.params["per_class"]
        self.buffer = ClassBalancedBuffer(None if per_class is None else int(per_class), self.params["max_total"])

    def augment(self, ctx: TrainContext, batch: Batch) -> Batch:
        if len(self.buffer) == 0:
            return batch
        n = max(1, round(ctx.replay_rows(len(batch)) * float(self.params["replay_ratio"])))
        x, y = self.buffer.sample(n, ctx.cpu_rng)
        x, y = x.to(ctx.device), y.to(ctx.device)
        return mix(batch, ctx.labelled_batch(x, y, ctx.unit_task[y]), ctx.new_share)

    def penalty(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        alpha, temperature = float(self.params["distill_alpha"]), float(self.params["temperature"])
        return distill_old_units(ctx, batch.x, logits, alpha, temperature)

    def after_experience(self, ctx: TrainContext) -> None:
        remember(self.buffer, ctx, self.params["selection"])

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state)
