"""Fine-tuning: the lower bound. Trains on the new data only."""

from __future__ import annotations

from model_core.strategies.base import Strategy, register_strategy
from model_core.strategy_specs import SPECS


@register_strategy
class Naive(Strategy):
    spec = SPECS["naive"]
