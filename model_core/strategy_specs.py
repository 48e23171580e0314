"""What each strategy is called, what it keeps and its parameters with defaults: plain data, no torch.

The HTTP service validates learn requests against this without importing torch; the strategy classes
in ``model_core.strategies`` take their flags and defaults from here.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FRACTIONS = frozenset({"hard_weight", "prune", "shrinkage"})  # parameters that are shares, from 0 to 1
# numbers (> 0, or a share from 0 to 1 when in FRACTIONS) whose null default means "chosen from the data"
OPTIONAL_NUMBERS = frozenset({"ridge", "shrinkage"})


@dataclass(frozen=True)
class StrategySpec:
    name: str
    # Keeps samples of old tasks; refused when the client asks for its data to be discarded.
    stores_data: bool = False
    # Can add classes to one shared head. EWC, LwF, MAS and fine-tuning cannot: in class-incremental
    # learning they keep one task's worth of classes (about 0.2 on Split-Digits: python -m benchmarks.continual).
    adds_classes: bool = True
    # Computes each task with its own network (packnet, progressive): needs task identities, so it is refused on
    # class-incremental classifiers.
    needs_tasks: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # the allowed values of string parameters
    # Training samples each new class needs (class_models: a class model's means are averages of at least this
    # many); the service checks it before a job is queued, the strategy again when it trains.
    min_new_class_samples: int = 1

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``params``; ValueError naming an unknown parameter or one with a bad value
        (checked here, so that a learn request is refused up front rather than failing in the worker)."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"strategy {self.name!r} has no parameter(s) {unknown}; known: {sorted(self.defaults)}")
        for key, value in params.items():
            problem = self._value_problem(key, value)
            if problem:
                raise ValueError(f"strategy {self.name!r} parameter {key!r} {problem}; got {reprlib.repr(value)}")
        return {**self.defaults, **params}

    def _value_problem(self, key: str, value: Any) -> str | None:
        """A value must be of its default's kind: one of the choices, a count (a whole number >= 1, or null
        where the default is null) or a finite weight >= 0 (> 0 for a temperature)."""
        default = self.defaults[key]
        if key in self.choices:
            if value is None and self.defaults[key] is None:  # a null default: chosen from the classifier
                return None
            return None if value in self.choices[key] else f"must be one of {list(self.choices[key])}"
        if key in OPTIONAL_NUMBERS:
            if value is None:
                return None
        elif default is None or isinstance(default, int):
            if (value is None and default is None) or (type(value) is int and value >= 1):
                return None
            return "must be a whole number >= 1" + (" or null" if default is None else "")
        positive = "temperature" in key or (key in OPTIONAL_NUMBERS and key not in FRACTIONS)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        finite = number and (isinstance(value, int) or math.isfinite(value))  # a huge int overflows isfinite
        if not finite or value < 0 or (positive and value == 0):
            return f"must be a finite number {'> 0' if positive else '>= 0'}"
        if key in FRACTIONS and value > 1:
            return "must be a number from 0 to 1"
        return None


SPECS: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        StrategySpec("naive", adds_classes=False, summary="fine-tuning on the new data only (lower bound)"),
        StrategySpec("joint", stores_data=True, summary="retrains on all data kept so far (upper bound)"),
        StrategySpec(
            "replay",
            stores_data=True,
            summary="class-balanced exemplar replay with distillation",
            defaults={
                # exemplars kept per class; null: a third of the class's training samples, at least 20. On 28x28
                # mnist-5k, 5 tasks: 20 a class 0.799, a third 0.913, joint 0.926 (python -m benchmarks.continual
                # --dataset mnist-5k --scenarios class-incremental --strategies replay --seeds 1, with --params
                # '{"replay": {"per_class": 20}}' for the first)
                "per_class": None,
                "max_total": None,  # optional cap on the whole buffer; per-class share shrinks to fit
                "selection": "herding",  # "herding" (iCaRL) or "random"
                "replay_ratio": 1.0,  # x the class-balanced replay rows per step (TrainContext.replay_rows)
                # Weight of distilling the previous model's old-unit outputs on every row, as iCaRL
                # does; it keeps old classes' regions as the full-data model drew them. Split-Digits
                # class-IL: 0.954 with it, 0.908 without (python -m benchmarks.sweeps).
                "distill_alpha": 1.0,
                "temperature": 2.0,  # distillation temperature
            },
            choices={"selection": ("herding", "random")},
        ),
        StrategySpec(
            "agem",
            stores_data=True,
            summary="A-GEM: projects each step so the loss on an exemplar memory (replay's) does not rise",
            defaults={
                "per_class": None,  # exemplars kept per class, as replay (null: a third of the class, at least 20)
                "max_total": None,  # optional cap on the whole memory, as replay
                "selection": "herding",  # "herding" or "random", as replay
                "memory_batch": 256,  # memory rows of each reference gradient (the whole memory when smaller)
                # "reference": the memory only constrains the step (the published A-GEM); "replay": its rows are
                # also trained on, as replay mixes them in (no distillation), and the projection stays. Split-Digits
                # class-IL, 1 seed: 0.432 and 0.950 (replay 0.965); task-IL "reference" 0.991
                # (python -m benchmarks.continual --strategies agem --seeds 1 --params '{"agem": {"memory": M}}')
                "memory": "replay",
            },
            choices={"selection": ("herding", "random"), "memory": ("reference", "replay")},
        ),
        StrategySpec(
            "gem",
            stores_data=True,
            summary="GEM: projects each step so the loss on no old task's exemplar memory rises (one constraint a task)",
            defaults={
                "per_class": None,
                "max_total": None,
                "selection": "herding",
                "memory_batch": 256,  # memory rows of each old task's gradient (all of the task's when fewer)
                "memory": "reference",  # as agem's
                "margin": 0.5,  # GEM's "memory strength": the least multiplier of a constraint once it binds
            },
            choices={"selection": ("herding", "random"), "memory": ("reference", "replay")},
        ),
        StrategySpec(
            "imm",
            adds_classes=False,
            summary="incremental moment matching: merges the old and new weights (mean, or Fisher-weighted mode)",
            defaults={
                "mode": "mode",  # "mean": plain average of the solutions; "mode": each weighted by its Fisher
                # Weight-transfer L2 pull toward the old weights while training. Split-Digits task-IL, 1 seed
                # (python -m benchmarks.continual --strategies imm --scenarios task-incremental --seeds 1 --params
                # '{"imm": {"l2": L}}'): mode 0.853 / 0.926 / 0.951 / 0.942 / 0.925 at L = 0 / 0.1 / 1 / 3 / 10,
                # mean ("mode": "mean") 0.900 / 0.840 / 0.940 / 0.935 / 0.922; naive 0.879
                "l2": 1.0,
                "fisher": "empirical",  # mode: "empirical" (data labels) or "true" (labels drawn from the model)
                "fisher_samples": 500,  # mode: samples of the experience used to estimate the Fisher
            },
            choices={"mode": ("mean", "mode"), "fisher": ("empirical", "true")},
        ),
        StrategySpec(
            "ewc",
            adds_classes=False,
            summary="elastic weight consolidation (separate or online)",
            defaults={
                # Large because the true Fisher of a confident network is tiny after an easy task such
                # as 0-vs-1 digits; Split-Digits task-IL: 1e5 -> 0.906, 1e8 -> 0.969, 1e9 -> 0.974 average
                # accuracy (python -m benchmarks.sweeps).
                "ewc_lambda": 1e9,
                "mode": "separate",  # "separate" or "online"
                "decay": 1.0,  # online only: how much of the old Fisher survives each experience
                "fisher": "true",  # "true" (labels sampled from the model) or "empirical" (data labels)
                "fisher_samples": 500,  # samples of the experience used to estimate the Fisher
            },
            choices={"mode": ("separate", "online"), "fisher": ("true", "empirical")},
        ),
        StrategySpec(
            "lwf",
            adds_classes=False,
            summary="learning without forgetting (distillation of the previous model)",
            defaults={"alpha": 1.0, "temperature": 2.0},  # distillation weight and temperature T
        ),
        StrategySpec(
            "mas",
            adds_classes=False,
            summary="memory aware synapses (output-sensitivity importance, no labels)",
            defaults={"mas_lambda": 1.0, "importance_samples": 500},
        ),
        StrategySpec(
            "generative_replay",
            summary="replays old classes from a generator (frozen per-class Gaussians by default); stores no samples",
            defaults={
                # "class_gaussians": one mixture of probabilistic PCA models per class, fitted once on the
                # class's data and then frozen, so replay does not decay with the number of tasks;
                # "vae": one conditional VAE retrained on new data plus its own replay each experience.
                "generator": "class_gaussians",
                # class_gaussians: at most this many mixture components per class (k-means clusters), fewer
                # when the class has under 4 samples per principal direction for each
                "components": 8,
                "rank": 16,  # class_gaussians: principal directions per component
                "noise_scale": 1.0,  # class_gaussians: scale of the noise beyond those directions
                # class_gaussians: the noise beyond those directions: "residual" (what each dimension has left,
                # none where the class never varies), "isotropic" (PPCA's, spread evenly over every dimension:
                # on 784-pixel digits the classifier learnt it as "old") or "none"
                "noise": "residual",
                # Share of a replayed row's target that is the class it was drawn for; the rest is the
                # previous model's soft output (distillation). The VAE draws classes too, so both use it.
                "hard_weight": 0.5,
                "latent_dim": 32,  # vae: latent size
                "hidden": 256,  # vae: hidden width (two layers each side)
                "generator_iterations": 800,  # vae: optimiser steps per experience
                "generator_batch": 64,  # vae: new-data samples per generator step (replay adds as many)
                "generator_lr": 1e-3,  # vae
                "temperature": 2.0,  # distillation temperature of the replayed soft targets
                "sample_temperature": 1.0,  # vae: std of the latent prior when sampling
            },
            choices={"generator": ("class_gaussians", "vae"), "noise": ("residual", "isotropic", "none")},
        ),
        StrategySpec(
            "analytic",
            summary="closed-form ridge head on frozen pretrained features from class statistics; stores no samples",
            defaults={
                # Ridge strength relative to the mean eigenvalue of the feature Gram matrix; null chooses it
                # for every solve by generalised cross-validation from the accumulated statistics.
                "ridge": None,
                # "random": ridge on a fixed seeded random projection of the features through a ReLU (RanPAC);
                # "input": on the features as they are. Fixed by a classifier's first analytic job. null: "random"
                # on backbone identity and on sentence encoders (banking77 8 tasks through the service: 0.924, ridge on the embeddings
                # 0.893 offline), "input" on a pretrained one (cifar10-mini 5x2 through the service: 0.789 and
                # 0.763 with 2,048 random features)
                "features": None,
                # random features: the projection's width; null: 4 per input feature, at most 2,048 (its Gram
                # matrix is width^2 float64: 32 MiB at 2,048, 128 MiB at 4,096, in memory and in each version's
                # saved state; its eigendecomposition, cubic in the width, is each job's solve)
                "width": None,
                # "classes": every class weighs the same whatever its sample count (each sample at 1 / its
                # class's count, in running sums of their own: model_core/strategies/analytic.py); "samples":
                # every sample does
                "balance": "classes",
            },
            choices={"features": ("random", "input"), "balance": ("classes", "samples")},
        ),
        StrategySpec(
            "class_models",
            summary="classifies by per-class Gaussians from running statistics, each covariance shrunk toward the "
            "pooled one; learns new classes and more samples of known ones; stores no samples",
            defaults={
                # Share of the pooled within-class covariance in every class's (0: each class its own covariance,
                # 1: the pooled one, linear discriminant analysis); null: a_c = k / (k + n_c), the pseudo-count k
                # chosen on held-out samples of each job (model_core.strategies.class_models).
                "shrinkage": None,
                # Principal directions each class's covariance is served with; null: chosen on held-out samples
                # of each job among 16, 32 and 64 (fewer than the dimension).
                "rank": None,
                # Floor of each class's noise variance, as a share of its mean per-dimension variance; it
                # also regularises: 0.3 is best or near it on 8x8 digits, mnist-5k and cifar10-mini features
                # (0.991, 0.957, 0.750; with 0.01: 0.989, 0.933, 0.750).
                "variance_floor": 0.3,
                "prior": "uniform",  # "uniform" or "frequency" (log of each class's sample count added)
            },
            choices={"prior": ("uniform", "frequency")},
            # 5, not 10: a few-shot job of 10 a class keeps 8 after the gate's fifth (and about 6 in each fold of
            # the first job's choice); under 10, the first job fell to generative replay, which rejected the 2nd
            # of 5 tasks of 8x8 digits and served 0.575 after the 3rd (benchmarks.gate_truth --per-class 10),
            # where class models shrunk toward the pooled covariance hold at 16 a class (0.95 after 5 tasks)
            min_new_class_samples=5,
        ),
        StrategySpec(
            "packnet",
            adds_classes=False,
            needs_tasks=True,
            summary="task-incremental: each task trains the weights still free, keeps its largest and frees the "
            "rest (Mallya & Lazebnik 2018); old tasks exactly preserved",
            defaults={
                # Share of the weights a task trained that are pruned (the smallest) and freed for later tasks
                "prune": 0.5,
                "retrain_steps": 100,  # optimiser steps retraining the kept weights after pruning
            },
        ),
        StrategySpec(
            "progressive",
            adds_classes=False,
            needs_tasks=True,
            summary="task-incremental: a new backbone column per task, laterally fed by the frozen older columns "
            "(Rusu et al. 2016); old tasks exactly preserved",
            # a new column starts "fresh" (its own initialisation, as in the paper) or as a copy of the previous one
            defaults={"init": "fresh"},
            choices={"init": ("fresh", "previous")},
        ),
    )
}

TASK_INCREMENTAL_ONLY = tuple(n for n, s in SPECS.items() if s.needs_tasks)


def needs_tasks_refusal(strategy: str) -> str:
    """Why ``strategy`` cannot learn on a class-incremental classifier, naming the strategies that can."""
    can = [n for n, s in SPECS.items() if s.adds_classes and not s.needs_tasks and n != "joint"]
    return (f"strategy {strategy!r} computes each task with its own network, so it needs the task at prediction "
            f"time: it works on task-incremental classifiers only. On this class-incremental classifier use one "
            f"of {', '.join(can)} (or create a task-incremental classifier)")


def task_network_refusal(strategy: str, previous: str | None, network: Mapping[str, Any]) -> str | None:
    """Why a learn request with ``strategy`` cannot run on this classifier (None: it can): packnet and progressive
    need task identities, and once they partition a backbone that trains, only they may train it."""
    if SPECS[strategy].needs_tasks and network.get("scenario") != "task-incremental":
        return needs_tasks_refusal(strategy)
    backbone = network.get("backbone")
    frozen = isinstance(backbone, Mapping) and backbone.get("train") == "frozen"
    if previous in TASK_INCREMENTAL_ONLY and strategy != previous and not frozen:
        return (f"this classifier computes each task with its own network ({previous}); strategy {strategy!r} "
                f"cannot train it without changing old tasks. Learn with {previous}, or start a new classifier")
    if strategy in TASK_INCREMENTAL_ONLY and previous not in (None, strategy) and not frozen:
        return (f"strategy {strategy!r} must learn a classifier's tasks from its first one (its old tasks were "
                f"learned by {previous!r}); create a new classifier for it")
    return None


# class_models fits its class models on the raw input when the backbone trains; beyond this many values an input
# is no small image (it refuses them)
CLASS_MODELS_MAX_INPUT = 4096


def default_strategy(network: Mapping[str, Any], previous: str | None = None) -> str:
    """The strategy a learn request gets when it names none: the classifier's last strategy, so that its classes
    stay in one kind of model; for a classifier's first job, the exemplar-free strategy that measured best for
    its input (class-incremental, no sample kept, ``python -m benchmarks.continual`` and
    ``python -m benchmarks.gate_truth``):

    - a frozen pretrained backbone (photos): ``analytic``, the ridge head from class statistics, exactly the head
      joint training would fit. Through the service (benchmarks.gate_truth): cifar10-mini 5x2 0.789 (joint 0.790,
      generative replay 0.774), one class a task 0.791 with every task promoted (generative replay 0.719);
    - small inputs on a backbone that trains (grey images up to 64x64, vectors up to 4,096 values):
      ``class_models``, each class's own Gaussian mixture, which nothing later can change. Through the service:
      8x8 digits 5x2 0.978, one digit a task 0.981, mnist-5k 5x2 0.951 (joint 0.965, 0.941 and 0.919;
      generative replay 0.957, 0.957 and 0.886);
    - anything else: ``generative_replay``.
    """
    if previous is not None:
        return previous
    backbone = network.get("backbone")
    if isinstance(backbone, Mapping) and backbone.get("train") == "frozen":
        return "analytic"
    inp = network.get("input") or {}
    numel = int(inp.get("dim") or 0) if inp.get("kind") == "vector" else (
        int(inp.get("channels") or 0) * int(inp.get("height") or 0) * int(inp.get("width") or 0))
    return "class_models" if 0 < numel <= CLASS_MODELS_MAX_INPUT else "generative_replay"


def default_candidates(network: Mapping[str, Any]) -> list[str]:
    """The strategies a classifier's first job chooses among when it names none (service.domain.strategy_choice):
    every strategy that keeps no sample, adds classes to one shared head and needs no task identities, read from
    the specs, so a new exemplar-free head takes part by being registered. Task-incremental classifiers: none
    (their first job gets ``default_strategy``)."""
    if network.get("scenario") == "task-incremental":
        return []
    return [n for n, s in SPECS.items() if not s.stores_data and s.adds_classes and not s.needs_tasks]


def class_models_refusal(strategy: str) -> str:
    """Why ``strategy`` cannot learn on a classifier whose classes are class models (its head has no weights a
    gradient strategy could train); the API refuses up front with it, the learner refuses with it too."""
    return (f"this classifier predicts with class models (strategy 'class_models'); strategy {strategy!r} cannot "
            "train them. Learn with class_models (or name no strategy), or start a new classifier for another strategy")


def suggestion_for_new_classes(retention: str) -> str:
    """The strategy to name when a class addition is refused for a strategy that cannot add classes."""
    if retention == "discard":
        return "generative_replay"
    return "generative_replay (keeps no training data) or replay (keeps 20 samples per class)"
