"""The Strategy protocol, the batch and context it sees, and the strategy registry.

A strategy never mutates the trainer: its hooks return values (a new batch, a penalty tensor) and its
state is plain tensors and JSON-able data, so a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor

from model_core.config import Scenario, TrainConfig
from model_core.networks.classifier import IncrementalClassifier
from model_core.strategy_specs import StrategySpec

ProgressFn = Callable[["Progress"], None]
# Replayed rows per step are at most this many times the new rows (24 old classes against 2 new ask for 12).
MAX_REPLAY_FACTOR = 16


@dataclass(frozen=True)
class Progress:
    """One progress report: which stage, how far, and the current loss parts."""

    stage: str  # "train", "fisher", "generator", ...
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)


class TrainingCancelled(Exception):
    """Raised inside training when the cancel check answers true."""


@dataclass(frozen=True)
class LabeledData:
    """Samples with their output unit and task index: x (N, *shape), y (N,) unit, task (N,) task index."""

    x: Tensor
    y: Tensor
    task: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def cat(self, other: LabeledData) -> LabeledData:
        return LabeledData(
            torch.cat([self.x, other.x.to(self.x)]),
            torch.cat([self.y, other.y.to(self.y)]),
            torch.cat([self.task, other.task.to(self.task)]),
        )


@dataclass(frozen=True)
class Batch:
    """What one optimiser step trains on.

    Labelled samples have one-hot ``targets``; replayed samples may carry a soft distribution (from the
    previous model) and a distillation ``temperature``. ``weight`` sums to 1 and sets each row's share
    of the classification loss, which is how replay is mixed in proportion to the classes seen.
    """

    x: Tensor  # (B, *input_shape)
    targets: Tensor  # (B, U) probabilities over output units; zero outside the row's allowed units
    task: Tensor  # (B,) task index of each row: decides which units it competes among
    weight: Tensor  # (B,) loss weight per row, summing to 1
    temperature: Tensor  # (B,) softmax temperature of each row (1 for hard labels)
    mask: Tensor  # (B, U) bool: the units each row's softmax runs over

    def __len__(self) -> int:
        return int(self.x.shape[0])


def mix(new: Batch, replay: Batch, new_share: float) -> Batch:
    """Concatenate two batches so that ``new`` carries ``new_share`` of the loss and ``replay`` the rest."""
    return Batch(
        x=torch.cat([new.x, replay.x]),
        targets=torch.cat([new.targets, replay.targets]),
        task=torch.cat([new.task, replay.task]),
        weight=torch.cat(
            [new.weight / new.weight.sum() * new_share, replay.weight / replay.weight.sum() * (1 - new_share)]
        ),
        temperature=torch.cat([new.temperature, replay.temperature]),
        mask=torch.cat([new.mask, replay.mask]),
    )


@dataclass
class TrainContext:
    """What strategies may read during one experience. Built by the trainer, one per experience."""

    model: IncrementalClassifier
    # Frozen copy of the model as it was before this experience (before its head grew): the EWC/MAS
    # anchor, the LwF teacher and the generative-replay labeller. None on the first experience.
    previous: IncrementalClassifier | None
    scenario: Scenario
    config: TrainConfig
    device: torch.device
    data: LabeledData  # this experience's samples, on the cpu
    unit_task: Tensor  # (U,) task index of each output unit, on device
    new_units: list[int]  # units this experience adds (may be empty: more data for known classes)
    rng: torch.Generator  # on ``device``: replay sampling, generator noise
    cpu_rng: torch.Generator  # shuffling and index sampling
    progress: ProgressFn | None = None
    should_cancel: Callable[[], bool] | None = None
    # False when the backbone is frozen: ``data`` and every batch then hold features, ``model`` and
    # ``previous`` map features to logits, and replay generates features.
    replays_inputs: bool = True

    @property
    def num_units(self) -> int:
        return int(self.unit_task.shape[0])

    @functools.cached_property
    def new_share(self) -> float:
        """Share of the loss for this experience's data when replay is mixed in: its classes over all
        classes seen (van de Ven et al. 2020), so every class weighs the same."""
        return len(torch.unique(self.data.y)) / max(self.num_units, 1)

    @functools.cached_property
    def new_classes(self) -> int:
        """Classes in this experience's data."""
        return max(1, len(torch.unique(self.data.y)))

    def replay_rows(self, batch_rows: int) -> int:
        """Replayed rows to add to a batch of ``batch_rows`` new rows: as many per old class as the batch has per
        new class, so a batch shows every class about equally often however many old classes there are; at
        least ``batch_rows`` and at most ``MAX_REPLAY_FACTOR`` times it."""
        n_old = len(self.old_units)
        wanted = math.ceil(batch_rows * n_old / self.new_classes)
        return max(batch_rows, min(wanted, MAX_REPLAY_FACTOR * batch_rows))

    @property
    def old_units(self) -> list[int]:
        """Units that existed before this experience."""
        return list(range(self.previous.num_units)) if self.previous is not None else []

    def unit_mask(self, task: Tensor) -> Tensor:
        """(B,) task index -> (B, U) bool: the units each row competes among.

        Class-incremental: every unit (one head, no task id). Task-incremental: the row's own task head.
        """
        if self.scenario == "class-incremental":
            return torch.ones(task.shape[0], self.num_units, dtype=torch.bool, device=task.device)
        return self.unit_task.to(task.device)[None, :] == task[:, None]

    def old_unit_groups(self) -> list[Tensor]:
        """Groups of old units over which the previous model's outputs form one softmax."""
        n_old = len(self.old_units)
        if n_old == 0:
            return []
        old_tasks = self.unit_task[:n_old]
        if self.scenario == "class-incremental":
            return [torch.arange(n_old, device=self.device)]
        return [torch.nonzero(old_tasks == t).flatten() for t in torch.unique(old_tasks)]

    def labelled_batch(self, x: Tensor, y: Tensor, task: Tensor) -> Batch:
        """A batch of hard-labelled rows with equal weights."""
        b = x.shape[0]
        targets = torch.zeros(b, self.num_units, device=x.device)
        targets[torch.arange(b, device=x.device), y] = 1.0
        ones = torch.ones(b, device=x.device)
        return Batch(x, targets, task, ones / b, ones, self.unit_mask(task))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on cuda when enabled; a no-op elsewhere."""
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def report(self, stage: str, step: int, total: int, **losses: float) -> None:
        if self.progress is not None:
            self.progress(Progress(stage, step, total, losses))

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise TrainingCancelled("training was cancelled")

    def iterate_minibatches(self, data: LabeledData, batch_size: int) -> Iterator[LabeledData]:
        """Fixed-order minibatches over ``data`` moved to the device (for importance estimates)."""
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            yield LabeledData(data.x[sl].to(self.device), data.y[sl].to(self.device), data.task[sl].to(self.device))


class Strategy:
    """Base class with no-op hooks. Subclasses override what they need and register themselves.

    Hooks, in the order the trainer calls them for one experience:
    ``training_data`` (joint adds stored data), ``before_experience``, then per step ``augment`` (replay
    returns a new, larger batch), ``penalty`` (EWC, LwF, MAS add a regulariser), ``before_step`` (after the
    backward pass: edit the gradients in place) and ``after_step`` (after the optimiser step: edit the
    weights in place), then ``after_experience`` (estimate importances, fill a buffer, fit a generator).
    """

    spec: ClassVar[StrategySpec]  # name, flags and parameter defaults (model_core.strategy_specs)
    gradient_steps: ClassVar[bool] = True  # False: the strategy solves its weights in closed form, no loop

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = self.spec.check_params(params)

    @property
    def name(self) -> str:
        return self.spec.name

    def training_data(self, ctx: TrainContext, data: LabeledData) -> LabeledData:
        return data

    def before_experience(self, ctx: TrainContext) -> None:
        return None

    def augment(self, ctx: TrainContext, batch: Batch) -> Batch:
        return batch

    def penalty(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        return logits.new_zeros(())

    def before_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        """Called with the gradients of one step's loss in ``net``'s parameters, before the optimiser uses them."""
        return None

    def after_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        """Called after the optimiser step, with the updated weights in ``net``."""
        return None

    def after_experience(self, ctx: TrainContext) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain data only."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def diagnostics(self) -> dict[str, Any]:
        """What the last experience measured about the strategy itself (JSON-able); dicts keyed by output unit
        are relabelled with class names by the learner."""
        return {}


S = TypeVar("S", bound=type[Strategy])
STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: S) -> S:
    """Class decorator: make a strategy available by its spec's name."""
    name = cast(type[Strategy], cls).spec.name
    if name in STRATEGIES:
        raise ValueError(f"strategy name {name!r} is taken")
    STRATEGIES[name] = cls
    return cls


def create_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Instantiate a registered strategy by name."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name](**dict(params or {}))
