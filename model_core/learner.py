"""The learner: a network plus the bookkeeping that makes it incremental (labels, tasks, strategy state)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from model_core.config import NetworkSpec, Scenario, TrainConfig
from model_core.data import Experience
from model_core.networks.backbones import MLP
from model_core.networks.classifier import IncrementalClassifier, copy_sharing_frozen, create_network
from model_core.networks.gaussian_head import GaussianHead
from model_core.networks.random_features import ExpandedLinear
from model_core.networks.standardize import fit_standardization, is_fitted
from model_core.strategies import create_strategy
from model_core.strategies.base import LabeledData, ProgressFn, Strategy
from model_core.strategy_specs import SPECS, class_models_refusal, needs_tasks_refusal
from model_core.trainer import TrainResult, resolve_device, train_experience


@dataclass
class TaskInfo:
    """A task and the output units of its classes (a contiguous head in task-incremental mode)."""

    name: str
    units: list[int]


@dataclass(frozen=True)
class LearnResult:
    strategy: str
    params: dict[str, Any]
    new_labels: list[str]
    train: TrainResult
    # What the strategy measured about itself while training, for the gate report: generative replay gives
    # {"replay_accuracy": {label: float}}, the previous model's accuracy on its replayed samples of each old
    # class (low means the generator, not the classifier, lost the class).
    diagnostics: dict[str, Any] = field(default_factory=dict)


def _labelled(per_unit: Any, labels: list[str]) -> Any:
    """{unit index: value} -> {label: value}; other values pass through."""
    if isinstance(per_unit, dict) and all(isinstance(k, int) for k in per_unit):
        return {labels[k]: v for k, v in per_unit.items()}
    return per_unit


@dataclass
class Learner:
    """Everything a version is: network, unit labels, tasks, and each strategy's saved state.

    ``strategy_states`` is keyed by strategy name, so a job with one strategy leaves another's state
    (an EWC Fisher, a replay generator) intact for later jobs that use it again.
    """

    spec: NetworkSpec
    model: IncrementalClassifier
    labels: list[str] = field(default_factory=list)  # label name of each output unit
    tasks: list[TaskInfo] = field(default_factory=list)
    strategy_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Frozen-backbone features of every input seen by this object, keyed by a digest of the input row: a job
    # computes each sample's features once for training, the gate's before/after checks and the export check.
    # A caller may hand in a cache shared with earlier learners of the same frozen backbone (``share_features``).
    feature_cache: dict[bytes, Tensor] = field(default_factory=dict, repr=False, compare=False)
    # Optional faster way to compute frozen-backbone features, e.g. ONNX Runtime on the cached backbone graph
    # (model_core.export_frozen.OnnxFeatures); None: the torch model. Never saved.
    feature_fn: Callable[[Tensor], Tensor] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, spec: NetworkSpec, seed: int = 0) -> Learner:
        """A learner with no classes yet; ``seed`` fixes the backbone's initial weights."""
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(seed)
            return cls(spec, create_network(spec))

    @property
    def scenario(self) -> Scenario:
        return self.spec.scenario

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskInfo:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"unknown task {name!r}; known tasks: {self.task_names}")

    def unit_task(self) -> Tensor:
        """(U,) index of the task that introduced each unit."""
        owner = torch.full((len(self.labels),), -1, dtype=torch.long)
        for i, t in enumerate(self.tasks):
            for u in t.units:
                if owner[u] < 0:
                    owner[u] = i
        return owner

    @property
    def frozen_backbone(self) -> bool:
        return bool(getattr(self.model, "frozen_backbone", False))

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 256, device: str = "auto") -> Tensor:
        """(N, *input_shape) -> (N, feature_dim) frozen-backbone features on the cpu, each row computed once."""
        self._check_input(x)
        x = x.float().contiguous()
        keys = [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in x]
        missing = [i for i, k in enumerate(keys) if k not in self.feature_cache]
        if missing and self.feature_fn is not None:
            out = self.feature_fn(x[missing])
            for i, f in zip(missing, out, strict=True):
                self.feature_cache[keys[i]] = f
        elif missing:
            dev = resolve_device(device)
            self.model.to(dev).eval()
            for start in range(0, len(missing), batch_size):
                rows = missing[start : start + batch_size]
                out = self.model.forward_features(x[rows].to(dev)).float().cpu()
                for i, f in zip(rows, out, strict=True):
                    self.feature_cache[keys[i]] = f
            self.model.to("cpu")
        return torch.stack([self.feature_cache[k] for k in keys]) if keys else torch.zeros(0, self.model.feature_dim)

    def _check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.spec.input.shape:
            raise ValueError(f"inputs have shape {tuple(x.shape[1:])}, the network takes {self.spec.input.shape}")

    def _assign_units(self, exp: Experience) -> tuple[list[int], list[str]]:
        """Map the experience's classes to output units, creating units (and tasks) as needed."""
        known_task = exp.task in self.task_names
        if self.scenario == "task-incremental":
            if known_task:
                t = self.task(exp.task)
                own = {self.labels[u]: u for u in t.units}
                missing = [c for c in exp.classes if c not in own]
                if missing:
                    raise ValueError(
                        f"task {exp.task!r} has no class(es) {missing}; a task's classes are fixed once learned"
                    )
                return [own[c] for c in exp.classes], []
            start = len(self.labels)
            self.labels += list(exp.classes)
            units = list(range(start, len(self.labels)))
            self.tasks.append(TaskInfo(exp.task, units))
            return units, list(exp.classes)
        index = {label: u for u, label in enumerate(self.labels)}
        new = [c for c in exp.classes if c not in index]
        for c in new:
            index[c] = len(self.labels)
            self.labels.append(c)
        units = [index[c] for c in exp.classes]
        if known_task:
            t = self.task(exp.task)
            t.units += [u for u in units if u not in t.units]
        else:
            self.tasks.append(TaskInfo(exp.task, units))
        return units, new

    def learn(
        self,
        exp: Experience,
        strategy: str,
        params: Mapping[str, Any] | None = None,
        config: TrainConfig | None = None,
        progress: ProgressFn | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> LearnResult:
        """Learn one experience in place.

        All or nothing: if training raises (a cancel, a bad parameter, an out-of-memory), the learner is
        restored to what it was before the call.
        """
        config = config or TrainConfig()
        self._check_input(exp.x)
        strat = create_strategy(strategy, params)
        if strategy != "class_models" and any(isinstance(h, GaussianHead) for h in self.model.heads):
            raise ValueError(class_models_refusal(strategy))
        self._check_task_strategy(strategy)
        if strategy in self.strategy_states:
            strat.load_state_dict(self.strategy_states[strategy])
        snapshot = (copy_sharing_frozen(self.model), list(self.labels), copy.deepcopy(self.tasks))
        try:
            return self._learn(exp, strategy, strat, snapshot[0], config, progress, should_cancel)
        except BaseException:
            self.model, self.labels, self.tasks = snapshot
            raise

    def _check_task_strategy(self, strategy: str) -> None:
        """packnet and progressive need task identities, and own the network once they have partitioned it."""
        if SPECS[strategy].needs_tasks and self.scenario != "task-incremental":
            raise ValueError(needs_tasks_refusal(strategy))
        kind = getattr(self.model.task_network, "kind", None)
        if kind is not None and strategy != kind:
            raise ValueError(f"this classifier computes each task with its own network ({kind}); strategy "
                             f"{strategy!r} cannot train it without changing old tasks. Learn with {kind}, "
                             "or start a new classifier for another strategy")  # fmt: skip

    def _learn(
        self,
        exp: Experience,
        name: str,
        strat: Strategy,
        before: IncrementalClassifier,
        config: TrainConfig,
        progress: ProgressFn | None,
        should_cancel: Callable[[], bool] | None,
    ) -> LearnResult:
        previous = before if before.num_units > 0 else None
        units, new_labels = self._assign_units(exp)
        n_new = len(self.labels) - self.model.num_units
        if n_new:
            self.model.expand_head(n_new, torch.Generator().manual_seed(config.seed + 7))
        task_index = self.task_names.index(exp.task)
        if previous is None and strat.gradient_steps and not SPECS[name].needs_tasks:
            self._fit_standardization(exp, config)
        x = self.features(exp.x, device=config.device) if self.frozen_backbone else exp.x.float()
        data = LabeledData(
            x,
            torch.tensor(units, dtype=torch.long)[exp.y],
            torch.full((len(exp),), task_index, dtype=torch.long),
        )
        new_units = list(range(self.model.num_units - n_new, self.model.num_units))
        result = train_experience(
            self.model,
            previous,
            strat,
            data,
            self.unit_task(),
            new_units,
            self.scenario,
            config,
            progress,
            should_cancel,
        )
        self.model.to("cpu")
        self.strategy_states[name] = strat.state_dict()
        diagnostics = {k: _labelled(v, self.labels) for k, v in strat.diagnostics().items()}
        return LearnResult(name, dict(strat.params), new_labels, result, diagnostics)

    @torch.no_grad()
    def _fit_standardization(self, exp: Experience, config: TrainConfig) -> None:
        """On a classifier's first gradient-trained job: standardise per dimension what its first trained layer
        reads when that is features or vectors (``model_core.networks.standardize``): the Linear head blocks of a
        frozen backbone, or the first layer of an ``mlp`` on vector input. Fitted once, then kept."""
        model = self.model
        if self.frozen_backbone:
            if any(isinstance(h, ExpandedLinear | GaussianHead) for h in model.heads):
                return  # blocks that read the features through their own sums, not a trained Linear
            if not is_fitted(model.feature_mean, model.feature_scale):
                mean, scale = fit_standardization(self.features(exp.x, device=config.device))
                model.feature_mean.copy_(mean)
                model.feature_scale.copy_(scale)
            return
        mlp = model.backbone
        if isinstance(mlp, MLP) and self.spec.input.kind == "vector" and not is_fitted(mlp.in_mean, mlp.in_scale):
            mean, scale = fit_standardization(model.normalize(exp.x.float()).flatten(1))
            mlp.in_mean.copy_(mean)
            mlp.in_scale.copy_(scale)

    @torch.no_grad()
    def logits(self, x: Tensor, batch_size: int = 512, device: str = "auto") -> Tensor:
        """(N, *input_shape) -> (N, U) logits on the cpu."""
        self._check_input(x)
        dev = resolve_device(device)
        if self.frozen_backbone:
            x, forward = self.features(x, device=device), self.model.forward_head
        else:
            forward = self.model
        self.model.to(dev).eval()
        out = [self.model.served(forward(x[i : i + batch_size].to(dev).float()).float()).cpu()
               for i in range(0, len(x), batch_size)]  # fmt: skip
        self.model.to("cpu")
        return torch.cat(out) if out else torch.zeros(0, self.model.num_units)

    @torch.no_grad()
    def calibrate(self, x: Tensor, labels: Sequence[str], tasks: Sequence[str] | None = None,
                  evidence: tuple[int, int] | None = None) -> dict[str, float]:  # fmt: skip
        """Fit the served score's temperature on held-out samples ``x`` with their labels (and, task-incremental,
        each sample's task: its softmax runs over that task's units) and set it; returns the temperature, the
        expected calibration error before and after (out of sample: model_core.calibration.calibration_report).
        ``evidence``: (right, n) of other samples scored out of sample (``model_core.calibration.fit_temperature``)."""
        from model_core.calibration import calibration_report

        self.model.logit_scale.fill_(1.0)
        if len(x) == 0:  # nothing held out: the logits are served as they are
            return {"temperature": 1.0, "ece_before": 0.0, "ece": 0.0, "samples": 0}
        raw = self.logits(x)
        index = {name: u for u, name in enumerate(self.labels)}
        y = torch.tensor([index[str(lab)] for lab in labels], dtype=torch.long)
        groups = None
        if self.scenario == "task-incremental":
            if tasks is None:
                raise ValueError("a task-incremental classifier is calibrated within each sample's task")
            units = {t.name: torch.tensor(t.units) for t in self.tasks}
            groups = [units[str(t)] for t in tasks]
        report = calibration_report(raw, y, groups, evidence)
        self.model.logit_scale.fill_(1.0 / report["temperature"])
        return report

    def predict(self, x: Tensor, task: str | None = None, device: str = "auto") -> list[str]:
        """Label of each input: over all units (class-IL) or within ``task``'s head (task-IL)."""
        logits = self.logits(x, device=device)
        if self.scenario == "task-incremental":
            if task is None:
                raise ValueError("a task-incremental classifier needs the task to predict within")
            units = torch.tensor(self.task(task).units)
            return [self.labels[int(units[i])] for i in logits[:, units].argmax(1)]
        return [self.labels[int(i)] for i in logits.argmax(1)]

    def accuracy(self, exp: Experience, device: str = "auto") -> float:
        """Fraction of ``exp`` predicted right; in task-IL the prediction is within ``exp.task``."""
        predicted = self.predict(exp.x, exp.task if self.scenario == "task-incremental" else None, device)
        truth = exp.labels
        return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
