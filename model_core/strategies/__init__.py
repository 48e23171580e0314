"""Continual-learning strategies, one per module, available by name through the registry."""

from model_core.strategies import (  # noqa: F401  (registers)
    agem,
    analytic,
    class_models,
    ewc,
    gem,
    generative_replay,
    imm,
    joint,
    lwf,
    mas,
    naive,
    packnet,
    progressive,
    replay,
)
from model_core.strategies.base import STRATEGIES, Strategy, create_strategy, register_strategy

__all__ = ["STRATEGIES", "Strategy", "create_strategy", "register_strategy"]
