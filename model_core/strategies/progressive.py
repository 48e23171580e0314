"""Progressive networks (Rusu et al. 2016), task-incremental only.

Task 0 trains the backbone as its column; every later task adds a column of the same architecture (``init``:
fresh, as in the paper, or a copy of the previous column) whose features are added to a lateral map of every
older column's features (``ProgressiveColumns``). Older columns, laterals and heads are pinned, so every old
task computes exactly what it did. The columns are weights of the classifier, saved in its bundle. On a frozen
backbone there is no column to add: only the new task's head trains and every old head is pinned.
"""

from __future__ import annotations

import torch

from model_core.networks.classifier import IncrementalClassifier
from model_core.networks.task_networks import ProgressiveColumns
from model_core.strategies.base import Strategy, TrainContext, register_strategy
from model_core.strategies.partitioned import Pins, first_task_refusal, new_task, pin_old_heads
from model_core.strategy_specs import SPECS


@register_strategy
class Progressive(Strategy):
    spec = SPECS["progressive"]
    pins: Pins

    def before_experience(self, ctx: TrainContext) -> None:
        task = new_task(ctx, self.name)
        self.pins = Pins()
        pin_old_heads(self.pins, ctx, task)
        if ctx.replays_inputs:  # the backbone trains: one column per task
            self._add_column(ctx.model, task, ctx.config.seed)

    def _add_column(self, net: IncrementalClassifier, task: int, seed: int) -> None:
        columns = net.task_network
        if columns is None and task == 0:
            columns = net.task_network = ProgressiveColumns(net.spec, net.feature_dim).to(next(net.parameters()).device)
        if not isinstance(columns, ProgressiveColumns) or len(columns.columns) != task - 1 + (task == 0):
            raise ValueError(first_task_refusal(self.name))
        if task == 0:
            return
        previous = net.backbone if task == 1 else columns.columns[task - 2]
        columns.add_column(net.backbone, seed + 1000 * task, previous if self.params["init"] == "previous" else None)
        self.pins.pin_module(net.backbone)
        for old in (*columns.columns[: task - 1], *columns.laterals[: task - 1]):
            self.pins.pin_module(old)

    def before_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        self.pins.zero_grads()

    def after_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        self.pins.restore()
