"""Fine-tuning: the lower bound. Trains on the new data only."""

from __future__ import annotations

from model_core.strategies.base import Strategy, register_strategy


@register_strategy
class Naive(Strategy):
    name = "naive"
    adds_classes = False
