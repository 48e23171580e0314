"""Class models as the classifier: argmax over classes of log p(x | class), with no network to forget.

Each class gets a mixture of probabilistic PCA Gaussians (``model_core.networks.class_gaussians``, the generator
generative replay uses), fitted in closed form on that class's samples the first time it is learned and frozen
from then on. The classifier's head blocks for those classes become ``GaussianHead`` blocks whose logits are the
classes' log-likelihoods (plus the log sample count with ``prior: "frequency"``), so serving and the ONNX export
predict exactly that argmax. Learning a class writes only its own block: every other class's model and logit
stay bit for bit what they were, in class- and task-incremental learning alike (task-IL: argmax within the
task's units, as for any head).

The models live in the space the head consumes: the frozen backbone's features when the backbone is frozen
(a pretrained one), else the flattened raw input (a network trained from scratch on small inputs; its
backbone is left untouched and unused). No gradient steps are taken: ``iterations`` is ignored. No sample is
kept: a component's mean averages at least ``MIN_SAMPLES`` samples, and a new class with fewer is refused.

``components`` and ``rank`` are fixed by the first job (null defaults are resolved then, from the space and
the data, and saved with the models); ``variance_floor`` and ``prior`` apply to the classes each job adds.

Refused, with what would work instead (ValueError, before anything changes): an experience with no new class
(a class model is never refitted), a classifier whose classes another strategy learned (and, by the learner,
another strategy on a class-models classifier), a new class of fewer than ``MIN_SAMPLES`` samples, and a
network whose backbone trains on inputs of more than ``MAX_INPUT_DIM`` values (use a frozen pretrained
backbone: the models then live in its features).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from model_core.networks.class_gaussians import ClassGaussians
from model_core.networks.gaussian_head import GaussianHead
from model_core.strategies.base import Strategy, TrainContext, register_strategy
from model_core.strategy_specs import SPECS

MIN_SAMPLES = SPECS["class_models"].min_new_class_samples  # 10: a component's mean averages at least this many
MAX_INPUT_DIM = 4096  # raw-input values a from-scratch network's class models may span (64x64 grey)
ARCH = ("components", "rank")


def choose_rank(dim: int, samples: int) -> int:
    """Principal directions per component, from the data: 16 below 1024 dimensions (8x8 and 28x28 digits:
    0.991 and 0.957; 8 gives 0.987 and 0.939), 32 from 1024 on (EfficientNet-Lite0's 1280 features of
    cifar10-mini: 0.750; 16 to 128 give 0.74 to 0.76), never more than a quarter of the dimensions nor than
    the smallest new class supports (4 samples per direction)."""
    wanted = 32 if dim >= 1024 else 16
    return max(1, min(wanted, dim // 4 if dim >= 4 else 1, samples // 4))


@register_strategy
class ClassModels(Strategy):
    spec = SPECS["class_models"]
    gradient_steps = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.gaussians: ClassGaussians | None = None
        self.counts: dict[int, int] = {}  # samples each class model was fitted on

    def before_experience(self, ctx: TrainContext) -> None:
        new = set(ctx.new_units)
        if not new:
            raise ValueError(
                "strategy 'class_models' fits a class once, the first time it is learned, and never changes it; "
                "this experience has no new class. Learn these samples with another strategy on a new classifier, "
                "or add them with a new class name"
            )
        for head in ctx.model.heads[:-1]:
            if not isinstance(head, GaussianHead):
                raise ValueError(
                    "strategy 'class_models' needs every class of the classifier to have its class model; this "
                    "classifier has classes learned by another strategy. Start a new classifier for class_models, "
                    "or keep using generative_replay or analytic here"
                )
        dim = int(ctx.data.x[0].numel())
        if ctx.replays_inputs and dim > MAX_INPUT_DIM:
            raise ValueError(
                f"strategy 'class_models' on a network whose backbone trains models the raw input, at most "
                f"{MAX_INPUT_DIM} values; this input has {dim}. Use a frozen pretrained backbone (e.g. "
                "timm/efficientnet_lite0, train 'frozen'), whose features it models instead"
            )
        counts = torch.bincount(ctx.data.y, minlength=ctx.num_units)
        small = [u for u in sorted(new) if int(counts[u]) < MIN_SAMPLES]
        if small:
            raise ValueError(
                f"strategy 'class_models' needs at least {MIN_SAMPLES} samples of each new class (a class model's "
                f"means are averages, never a sample); output unit(s) {small} have "
                f"{[int(counts[u]) for u in small]}"
            )
        if self.gaussians is not None and self.gaussians.dim != dim:
            raise ValueError(f"the saved class models span {self.gaussians.dim} values; these samples have {dim}")

    def after_experience(self, ctx: TrainContext) -> None:
        x, y = ctx.data.x, ctx.data.y
        if self.gaussians is None:
            smallest = min(int((y == u).sum()) for u in ctx.new_units)
            rank = self.params["rank"]
            rank = choose_rank(int(x[0].numel()), smallest) if rank is None else int(rank)
            self.params["rank"] = rank
            components = self.params["components"]
            components = (8 if ctx.replays_inputs else 1) if components is None else int(components)
            self.params["components"] = components
            self.gaussians = ClassGaussians(int(x[0].numel()), components, rank, MIN_SAMPLES)
        for i, unit in enumerate(ctx.new_units):
            rows = x[y == unit]
            self.gaussians.fit_class(unit, rows, ctx.cpu_rng)
            self.counts[unit] = len(rows)
            ctx.report("train", i + 1, len(ctx.new_units))
            ctx.check_cancel()
        prior = None
        if self.params["prior"] == "frequency":
            prior = {u: float(torch.tensor(float(self.counts[u])).log()) for u in ctx.new_units}
        block = ctx.model.heads[-1]
        assert isinstance(block, nn.Linear) and block.out_features == len(ctx.new_units)
        head = GaussianHead.from_models(self.gaussians, ctx.new_units, "input" if ctx.replays_inputs else "features",
                                        float(self.params["variance_floor"]), prior)  # fmt: skip
        ctx.model.heads[-1] = head.to(block.weight.device)  # the new units' block, the one learn just added

    def diagnostics(self) -> dict[str, Any]:
        if self.gaussians is None:
            return {}
        return {"components": {u: int(m["weights"].shape[0]) for u, m in self.gaussians.classes.items()},
                "rank": self.gaussians.rank}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        if self.gaussians is None:
            return {}
        return {"gaussians": self.gaussians.state_dict(), "counts": {str(u): n for u, n in self.counts.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.gaussians = ClassGaussians.from_state(state["gaussians"])
        self.params.update({k: self.gaussians.__dict__[k] for k in ARCH})  # the saved models' shape wins
        self.counts = {int(u): int(n) for u, n in state["counts"].items()}
