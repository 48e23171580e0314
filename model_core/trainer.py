"""The one training loop. Strategies plug in through their hooks; nothing here names a strategy."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model_core.config import Scenario, TrainConfig
from model_core.networks.classifier import HeadBlocks, IncrementalClassifier
from model_core.strategies.base import Batch, LabeledData, ProgressFn, Strategy, TrainContext

REPORT_EVERY = 10  # optimiser steps between progress reports


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda when present, else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def classification_loss(logits: Tensor, batch: Batch) -> Tensor:
    """Weighted soft cross-entropy over each row's allowed units, T^2-scaled for distilled rows.

    logits (B, U). Hard labels are one-hot targets with temperature 1, so for them
    this is ordinary cross-entropy restricted to the row's units.
    """
    t, mask = batch.temperature[:, None], batch.mask
    logp = F.log_softmax((logits.float() / t).masked_fill(~mask, float("-inf")), dim=1)
    rows = -(batch.targets * logp.masked_fill(~mask, 0.0)).sum(dim=1) * batch.temperature**2
    return (batch.weight * rows).sum()


class HeadView(HeadBlocks):
    """The trainable part of a classifier whose backbone is frozen: features (B, F) -> logits (B, U).

    Training a frozen-backbone classifier runs on features computed once per job, so every strategy sees this
    view as "the model": its inputs are features and its parameters are the head's.
    """

    def __init__(self, model: IncrementalClassifier) -> None:
        super().__init__()
        self.spec = model.spec
        self.feature_dim = model.feature_dim
        self.heads = model.heads  # shared, not copied: training the view trains the classifier

    def forward_features(self, x: Tensor) -> Tensor:
        return x

    def forward(self, features: Tensor) -> Tensor:
        return self.forward_head(features)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    final_loss: float


def train_experience(
    model: IncrementalClassifier,
    previous: IncrementalClassifier | None,
    strategy: Strategy,
    data: LabeledData,
    unit_task: Tensor,
    new_units: list[int],
    scenario: Scenario,
    config: TrainConfig,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``model`` on one experience with ``strategy``; returns step count and timing.

    When the model's backbone is frozen, ``data.x`` holds its features (computed once by the learner) and only
    the head trains, through a ``HeadView``. Seeds the global RNGs with ``config.seed`` too, for the randomness that takes no generator argument
    (a VAE's reparameterisation noise), so one experience with one seed always trains the same way.
    """
    start = time.perf_counter()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    if previous is not None:
        previous = copy.deepcopy(previous).to(device).eval().requires_grad_(False)
    features = bool(getattr(model, "frozen_backbone", False))
    net: IncrementalClassifier = HeadView(model) if features else model  # type: ignore[assignment]
    if previous is not None and features:
        previous = HeadView(previous)  # type: ignore[assignment]
    cpu_rng = torch.Generator().manual_seed(config.seed)
    rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    ctx = TrainContext(
        model=net,
        previous=previous,
        scenario=scenario,
        config=config,
        device=device,
        data=data,
        unit_task=unit_task.to(device),
        new_units=new_units,
        rng=rng,
        cpu_rng=cpu_rng,
        progress=progress,
        should_cancel=should_cancel,
        replays_inputs=not features,
    )
    train_data = strategy.training_data(ctx, data)
    strategy.before_experience(ctx)

    n = len(train_data)
    bs = min(config.batch_size, n)
    per_epoch = math.ceil(n / bs)
    total = config.iterations if config.iterations is not None else config.epochs * per_epoch
    last = float("nan")
    if not strategy.gradient_steps:
        total, last = 0, 0.0
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    net.train()
    order = torch.randperm(n, generator=cpu_rng)
    cursor = 0
    for step in range(1, total + 1):
        if cursor + bs > n:  # new epoch: reshuffle; drop the ragged tail so batches stay full
            order, cursor = torch.randperm(n, generator=cpu_rng), 0
        idx = order[cursor : cursor + bs]
        cursor += bs
        batch = ctx.labelled_batch(
            train_data.x[idx].to(device), train_data.y[idx].to(device), train_data.task[idx].to(device)
        )
        batch = strategy.augment(ctx, batch)
        with ctx.autocast():
            logits = net(batch.x)  # (B, U)
        ce = classification_loss(logits, batch)
        penalty = strategy.penalty(ctx, batch, logits)
        loss = ce + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        last = float(loss.detach())
        if step % REPORT_EVERY == 0 or step == total:
            ctx.report(
                "train", step, total, loss=last, classification=float(ce.detach()), penalty=float(penalty.detach())
            )
            ctx.check_cancel()
    net.eval()
    strategy.after_experience(ctx)
    return TrainResult(total, time.perf_counter() - start, last)
