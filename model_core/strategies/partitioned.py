"""What packnet and progressive share: pinned weights, and the checks that a job learns a new task.

Pinning is how an old task stays bitwise unchanged: the pinned entries' gradients are zeroed before each step
and their values written back after it, since Adam's momentum and weight decay move a weight whose gradient
is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.strategies.base import TrainContext
from model_core.strategy_specs import needs_tasks_refusal


class Pins:
    """Parameters, or entries of them (``where``), held at the values they had when pinned."""

    def __init__(self) -> None:
        self.entries: list[tuple[nn.Parameter, Tensor | None, Tensor]] = []

    def pin(self, p: nn.Parameter, where: Tensor | None = None) -> None:
        self.entries.append((p, where, p.detach().clone()))

    def pin_module(self, module: nn.Module) -> None:
        for p in module.parameters():
            self.pin(p)

    def zero_grads(self) -> None:
        for p, where, _ in self.entries:
            if p.grad is not None:
                p.grad.zero_() if where is None else p.grad.masked_fill_(where, 0.0)

    @torch.no_grad()
    def restore(self) -> None:
        for p, where, value in self.entries:
            p.copy_(value if where is None else torch.where(where, value, p))


def new_task(ctx: TrainContext, strategy: str) -> int:
    """The index of the task this job adds (its head block is the last); refuses anything else."""
    if ctx.scenario != "task-incremental":
        raise ValueError(needs_tasks_refusal(strategy))
    n_tasks = len(ctx.model.heads)
    if not ctx.new_units or bool((ctx.data.task != n_tasks - 1).any()):
        raise ValueError(f"strategy {strategy!r} learns each task once, in one job, and then freezes it; this task "
                         "is already learned: learn new data for it as a new task, or use ewc/lwf/mas")  # fmt: skip
    return n_tasks - 1


def first_task_refusal(strategy: str) -> str:
    return (f"strategy {strategy!r} must learn a classifier's tasks from its first one (its old tasks were learned "
            "by another strategy, with weights it cannot partition); create a new classifier for it")


def pin_old_heads(pins: Pins, ctx: TrainContext, task: int) -> None:
    for head in ctx.model.heads[:task]:
        pins.pin_module(head)
