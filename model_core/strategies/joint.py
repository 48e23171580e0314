"""Joint training: keeps every sample and trains on all data seen so far (the upper bound)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from model_core.strategies.base import LabeledData, Strategy, TrainContext, register_strategy
from model_core.strategy_specs import SPECS


@register_strategy
class Joint(Strategy):
    spec = SPECS["joint"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.stored: LabeledData | None = None

    def training_data(self, ctx: TrainContext, data: LabeledData) -> LabeledData:
        return data if self.stored is None else self.stored.cat(data)

    def after_experience(self, ctx: TrainContext) -> None:
        self.stored = ctx.data if self.stored is None else self.stored.cat(ctx.data)

    def state_dict(self) -> dict[str, Any]:
        if self.stored is None:
            return {}
        return {"x": self.stored.x, "y": self.stored.y, "task": self.stored.task}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.stored = LabeledData(state["x"], state["y"].to(torch.long), state["task"].to(torch.long))
