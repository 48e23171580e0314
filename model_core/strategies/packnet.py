"""PackNet (Mallya & Lazebnik 2018), task-incremental only.

A task trains the backbone weights no older task owns (every one at first), then prunes the ``prune`` share of
them with the smallest magnitude (set to zero and freed for later tasks) and retrains the kept ones for
``retrain_steps``. Task t computes with the weights of tasks 0..t only (``PackNetOwners``), so later tasks
cannot change it: its weights, biases and head are pinned. The owner of every weight is a uint8 buffer of the
classifier, saved in its bundle. On a frozen backbone nothing is shared: only the new task's head trains and
every old head is pinned.
"""

from __future__ import annotations

from typing import Any

import torch

from model_core.networks.classifier import IncrementalClassifier
from model_core.networks.task_networks import MAX_TASKS, PackNetOwners
from model_core.strategies.base import Strategy, TrainContext, register_strategy
from model_core.strategies.importance import masked_log_softmax
from model_core.strategies.partitioned import Pins, first_task_refusal, new_task, pin_old_heads
from model_core.strategy_specs import SPECS


@register_strategy
class PackNet(Strategy):
    spec = SPECS["packnet"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.pins = Pins()
        self.task = 0
        self.free_share: float | None = None

    def before_experience(self, ctx: TrainContext) -> None:
        self.task = new_task(ctx, self.name)
        self.pins = Pins()
        pin_old_heads(self.pins, ctx, self.task)
        if ctx.replays_inputs:  # the backbone trains: partition it
            self._claim_free(ctx.model, self.task)

    def _claim_free(self, net: IncrementalClassifier, task: int) -> None:
        """Give the new task every free weight; pin the older tasks' weights and (after task 0) the biases."""
        owners = net.task_network
        if (owners is None and task > 0) or (owners is not None and not isinstance(owners, PackNetOwners)):
            raise ValueError(first_task_refusal(self.name))
        if task >= MAX_TASKS:
            raise ValueError(f"packnet keeps at most {MAX_TASKS} tasks in one classifier")
        if owners is None:
            owners = net.task_network = PackNetOwners(net.backbone).to(next(net.parameters()).device)
        weights = {owners.weight_name(i): i for i in owners.layers}
        for name, p in net.backbone.named_parameters():
            if name not in weights:
                if task > 0:
                    self.pins.pin(p)
                continue
            owner = owners.owner(weights[name])
            owner[owner == 0] = task + 1
            self.pins.pin(p, owner != task + 1)
        owners.train_task = task

    def before_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        self.pins.zero_grads()

    def after_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        self.pins.restore()

    def after_experience(self, ctx: TrainContext) -> None:
        owners = getattr(ctx.model, "task_network", None)
        if not isinstance(owners, PackNetOwners):
            return
        self._prune(ctx.model, owners)
        self._retrain(ctx)
        owners.train_task = None

    @torch.no_grad()
    def _prune(self, net: IncrementalClassifier, owners: PackNetOwners) -> None:
        """Zero and free the ``prune`` share of the new task's weights with the smallest magnitude, per layer."""
        params = dict(net.backbone.named_parameters())
        free = total = 0
        for i in owners.layers:
            p, owner = params[owners.weight_name(i)], owners.owner(i)
            own = owner == self.task + 1
            k = int(int(own.sum()) * float(self.params["prune"]))
            if k > 0:
                threshold = p.abs()[own].kthvalue(k).values
                cut = own & (p.abs() <= threshold)
                p.masked_fill_(cut, 0.0)
                owner.masked_fill_(cut, 0)
            self.pins.pin(p, owner != self.task + 1)  # the freed weights stay zero while the kept ones retrain
            free, total = free + int((owner == 0).sum()), total + owner.numel()
        self.free_share = free / max(total, 1)

    def _retrain(self, ctx: TrainContext) -> None:
        """A short retraining of the kept weights on this task's data (the pruned ones are pinned at zero)."""
        net, data = ctx.model, ctx.data
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=ctx.config.lr,
                                     weight_decay=ctx.config.weight_decay)  # fmt: skip
        bs = min(ctx.config.batch_size, len(data))
        net.train()
        for _ in range(int(self.params["retrain_steps"])):
            idx = torch.randperm(len(data), generator=ctx.cpu_rng)[:bs]
            batch = ctx.labelled_batch(data.x[idx].to(ctx.device), data.y[idx].to(ctx.device),
                                       data.task[idx].to(ctx.device))  # fmt: skip
            with ctx.autocast():
                logits = net(batch.x)
            loss = -masked_log_softmax(logits.float(), batch.mask).gather(1, batch.targets.argmax(1)[:, None]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.pins.zero_grads()
            optimizer.step()
            self.pins.restore()
        net.eval()

    def diagnostics(self) -> dict[str, Any]:
        return {} if self.free_share is None else {"packnet_free_share": round(self.free_share, 4)}
