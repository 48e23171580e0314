"""The one training loop. Strategies plug in through their hooks; nothing here names a strategy."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model_core.config import Scenario, TrainConfig
from model_core.networks.classifier import HeadBlocks, IncrementalClassifier, copy_sharing_frozen
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
        self.feature_mean, self.feature_scale = model.feature_mean, model.feature_scale  # the heads' standardisation

    def forward_features(self, x: Tensor) -> Tensor:
        return x

    def forward(self, features: Tensor) -> Tensor:
        return self.forward_head(features)


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimiser steps taken
    seconds: float
    final_loss: float
    budget: int = 0  # the most steps this experience could take
    # why training ended: "plateau" (validation loss stopped improving), "budget" (the step budget ran out),
    # "requested" (a fixed number of steps was asked for), "closed-form" (no gradient steps)
    stopped: str = "requested"
    improving: bool = False  # the validation loss was still falling at the end: more steps would help
    best_step: int = 0  # the step with the best validation loss (its weights are kept unless steps were requested)
    val_loss: float | None = None  # the kept weights' validation loss
    val_rows: int = 0  # new-data rows held out for validation (replayed rows are added to them)

    def summary(self) -> dict[str, Any]:
        """JSON-able, for the job and the gate report."""
        return {"steps": self.steps, "budget": self.budget, "stopped": self.stopped, "improving": self.improving,
                "best_step": self.best_step, "val_loss": None if self.val_loss is None else round(self.val_loss, 5),
                "val_rows": self.val_rows, "seconds": round(self.seconds, 3)}  # fmt: skip


# Training length from the data. The budget is EPOCHS passes over the new data (replay rows scale with the
# old classes, so one pass covers every class), at least STEPS_PER_CLASS per class seen and MIN_STEPS, at most
# ``TrainConfig.max_iterations``; validation decides where in it to stop, after MIN_STEPS at the least.
EPOCHS = 50
STEPS_PER_CLASS = 50
MIN_STEPS = 200
CHECKS = 20  # validation checks over a whole budget
PATIENCE = 4  # checks without a better validation loss before stopping
MIN_GAIN = 0.01  # relative improvement that counts as better
# and absolute (mean cross-entropy, nats a row): a loss already near 0 keeps falling by a relative 1% a check for ever
# (standardised inputs of well-separated classes), which is growing confidence, not learning
MIN_ABS_GAIN = 1e-4
VAL_SHARE, VAL_MAX, VAL_MIN = 0.1, 512, 20  # new-data rows held out: 10%, at most 512; none under 20


def step_budget(n: int, batch_size: int, classes: int, cap: int) -> int:
    """Optimiser steps an experience of ``n`` training rows may take when none are requested."""
    return max(1, min(cap, max(MIN_STEPS, EPOCHS * math.ceil(n / batch_size), STEPS_PER_CLASS * classes)))


def split_validation(data: LabeledData, generator: torch.Generator) -> tuple[LabeledData, LabeledData | None]:
    """(training rows, held-out validation rows or None when the data are too few to spare any)."""
    n_val = min(VAL_MAX, int(len(data) * VAL_SHARE))
    if n_val < VAL_MIN:
        return data, None
    order = torch.randperm(len(data), generator=generator)
    keep, val = order[n_val:], order[:n_val]
    return LabeledData(data.x[keep], data.y[keep], data.task[keep]), LabeledData(data.x[val], data.y[val], data.task[val])


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
    """Train ``model`` on one experience with ``strategy``; returns steps, why it stopped and timing.

    When the model's backbone is frozen, ``data.x`` holds its features (computed once by the learner) and only
    the head trains, through a ``HeadView``. Seeds the global RNGs with ``config.seed`` too, for the randomness that takes no generator argument
    (a VAE's reparameterisation noise), so one experience with one seed always trains the same way.

    Length: ``config.iterations`` steps when set; otherwise up to ``step_budget`` steps, stopping when the loss
    on a validation set (a held-out slice of the new data, with the strategy's replay of the old classes added
    by its own ``augment``) has not improved for PATIENCE checks, and keeping the weights with the best
    validation loss. Either way the result says whether that loss was still falling at the end.
    """
    start = time.perf_counter()
    seed_everything(config.seed)
    ctx = _context(model, previous, data, unit_task, new_units, scenario, config, progress, should_cancel)
    net = ctx.model
    train_data = strategy.training_data(ctx, data)
    strategy.before_experience(ctx)
    if not strategy.gradient_steps:
        strategy.after_experience(ctx)
        return TrainResult(0, time.perf_counter() - start, 0.0, 0, "closed-form")
    fixed = config.iterations is not None
    # Requested steps train on every row (the validation loss on training rows only reports the trend)
    val_data = None
    if not fixed:
        train_data, val_data = split_validation(train_data, torch.Generator().manual_seed(config.seed + 3))
    n = len(train_data)
    bs = min(config.batch_size, n)
    total = config.iterations if config.iterations is not None else step_budget(n, bs, ctx.num_units, config.max_iterations)
    validation = _Validation(ctx, strategy, val_data or LabeledData(*(t[:VAL_MAX] for t in (train_data.x, train_data.y, train_data.task))))
    step, last, stopped = _optimise(ctx, net, strategy, train_data, bs, total, validation, fixed)
    if not fixed:  # a requested number of steps is honoured as asked: the last weights are kept
        validation.restore(net)
    net.eval()
    strategy.after_experience(ctx)
    return TrainResult(step, time.perf_counter() - start, last, total, stopped, improving=validation.stale == 0,
                       best_step=validation.best_step, val_loss=validation.best,
                       val_rows=0 if val_data is None else len(val_data))  # fmt: skip


def _context(
    model: IncrementalClassifier,
    previous: IncrementalClassifier | None,
    data: LabeledData,
    unit_task: Tensor,
    new_units: list[int],
    scenario: Scenario,
    config: TrainConfig,
    progress: ProgressFn | None,
    should_cancel: Callable[[], bool] | None,
) -> TrainContext:
    """The experience's context: the model on its device (through a ``HeadView`` when its backbone is frozen),
    a frozen copy of the previous model, and the seeded generators."""
    device = resolve_device(config.device)
    model.to(device)
    if previous is not None:
        previous = copy_sharing_frozen(previous).to(device).eval().requires_grad_(False)
    features = bool(getattr(model, "frozen_backbone", False))
    net: IncrementalClassifier = HeadView(model) if features else model  # type: ignore[assignment]
    if previous is not None and features:
        previous = HeadView(previous)  # type: ignore[assignment]
    cpu_rng = torch.Generator().manual_seed(config.seed)
    rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    return TrainContext(
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


def _optimise(
    ctx: TrainContext,
    net: IncrementalClassifier,
    strategy: Strategy,
    train_data: LabeledData,
    bs: int,
    total: int,
    validation: _Validation,
    fixed: bool,
) -> tuple[int, float, str]:
    """Up to ``total`` optimiser steps on shuffled batches of ``bs`` rows, checking the validation loss and
    reporting as it goes; stops early on a plateau unless ``fixed``. Returns (steps, last loss, why it stopped)."""
    check_every = max(REPORT_EVERY, math.ceil(total / CHECKS))
    last = float("nan")
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=ctx.config.lr, weight_decay=ctx.config.weight_decay, foreach=True)
    net.train()
    n = len(train_data)
    order = torch.randperm(n, generator=ctx.cpu_rng)
    cursor, step, stopped = 0, 0, "requested" if fixed else "budget"
    for step in range(1, total + 1):
        if cursor + bs > n:  # new epoch: reshuffle; drop the ragged tail so batches stay full
            order, cursor = torch.randperm(n, generator=ctx.cpu_rng), 0
        idx = order[cursor : cursor + bs]
        cursor += bs
        loss, ce, penalty = _step(ctx, net, strategy, optimizer, train_data, idx)
        last = float(loss.detach())
        checked = step % check_every == 0 or step == total
        if checked:
            validation.check(net, step)
        if step % REPORT_EVERY == 0 or step == total:
            ctx.report(
                "train", step, total, loss=last, classification=float(ce.detach()), penalty=float(penalty.detach())
            )
            ctx.check_cancel()
        # never before MIN_STEPS: a new class far from the old ones first raises the loss on the replayed rows
        if checked and not fixed and validation.stale >= PATIENCE and step >= max(PATIENCE * check_every, MIN_STEPS):
            stopped = "plateau"
            break
    return step, last, stopped


def _step(
    ctx: TrainContext,
    net: IncrementalClassifier,
    strategy: Strategy,
    optimizer: torch.optim.Optimizer,
    train_data: LabeledData,
    idx: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One optimiser step on the rows ``idx`` (with the strategy's replay and penalty): (loss, its
    classification part, its penalty)."""
    device = ctx.device
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
    strategy.before_step(ctx, net)  # gradient projection (A-GEM), gradient masks (PackNet)
    optimizer.step()
    strategy.after_step(ctx, net)  # weights pinned after the step (PackNet)
    return loss, ce, penalty


class _Validation:
    """The loss on a fixed validation batch (the held-out rows plus the strategy's replay, drawn once), and
    the weights at its best."""

    def __init__(self, ctx: TrainContext, strategy: Strategy, data: LabeledData) -> None:
        self.ctx, self.strategy = ctx, strategy
        dev = ctx.device
        self.batch = strategy.augment(ctx, ctx.labelled_batch(data.x.to(dev), data.y.to(dev), data.task.to(dev)))
        self.best: float | None = None  # the loss at the best check
        self.errors = 0  # the errors at the best check
        self.best_step, self.stale = 0, 0
        self.state: dict[str, Tensor] | None = None

    @torch.no_grad()
    def check(self, net: IncrementalClassifier, step: int) -> None:
        net.eval()
        with self.ctx.autocast():
            logits = net(self.batch.x)
        loss = float(classification_loss(logits, self.batch) + self.strategy.penalty(self.ctx, self.batch, logits))
        # errors against each row's most likely target (its label, or the replayed row's class)
        errors = int((logits.float().masked_fill(~self.batch.mask, float("-inf")).argmax(1)
                      != self.batch.targets.argmax(1)).sum())  # fmt: skip
        net.train()
        # better: fewer errors, or as few with a clearly lower loss (a falling loss alone, on rows already
        # right, is growing confidence and no reason to go on)
        if self.best is None or errors < self.errors or (errors == self.errors and loss < min(self.best * (1 - MIN_GAIN), self.best - MIN_ABS_GAIN)):
            self.best, self.errors, self.best_step, self.stale = loss, errors, step, 0
            self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            self.stale += 1

    def restore(self, net: IncrementalClassifier) -> None:
        if self.state is not None:
            net.load_state_dict(self.state)
