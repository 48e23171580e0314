"""Class models as the classifier: argmax over classes of log p(x | class), with no network to forget.

Each class is a Gaussian whose mean and covariance come from running sufficient statistics
(``model_core.networks.class_stats``): its count, mean and centred scatter, merged exactly with every batch
that has samples of it, so a class is learnt from every sample ever sent for it, in one job or many, in any
order, and no sample is kept. Each class's covariance is shrunk toward the pooled within-class covariance
(regularised discriminant analysis) by one share for every class, ``a = k / (k + n)`` with n the median class
count: classes of 10 samples get nearly the pooled (linear discriminant) shape, classes of 1,000 keep their own.
The share is the same for every class, not ``k / (k + n_c)`` by each class's own count: that rule gave a class of
5x fewer samples more of the pooled (broader) shape than the larger classes learnt after it, which then took its
samples (banking77 in 8 tasks, the first sent with a fifth of its samples: task 3 rejected, 0.809 at the end,
against every task promoted and 0.924 with one share; equal tasks are the same under both rules, as every class
then has the median count). The pseudo-count k and the served rank are chosen on
held-out samples of each job (a seeded ``HOLDOUT`` share of each class in it: the models are fitted on the
rest plus everything learnt before, the held-out rows are scored against every class, the highest accuracy
wins, ties to the higher mean log posterior), then the models are refitted on all of the job's samples.
``shrinkage`` fixes a_c for every class instead (0: each class's own covariance, 1: the pooled one).

The classifier's head blocks are ``GaussianHead`` blocks whose logits are the classes' log-likelihoods (plus
the log sample count with ``prior: "frequency"``), so serving and the ONNX export predict exactly that argmax.
What a job changes: a class's mean and own scatter change only when the job has samples of it; the pooled
covariance, and so every class's shrunk covariance (a_c > 0) and every head block, is recomputed every job,
since the pooled sums grow with every class and sample learnt. With ``shrinkage`` 0 (and a fixed ``rank``) a
job leaves the model of every class it has no sample of bit for bit as it was.

The models live in the space the head consumes: the frozen backbone's features when the backbone is frozen
(a pretrained one), else the flattened raw input (a network trained from scratch on small inputs; its
backbone is left untouched and unused). No gradient steps are taken: ``iterations`` is ignored.

Refused, with what would work instead (ValueError, before anything changes): a classifier whose classes another
strategy learned (and, by the learner, another strategy on a class-models classifier), one whose class models
were fitted before they were kept as statistics (they cannot take more samples), a new class of fewer than
``MIN_SAMPLES`` samples (a mean is an average, never a sample), and a network whose backbone trains on inputs
of more than ``MAX_INPUT_DIM`` values (use a frozen pretrained backbone: the models then live in its features).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model_core.networks.class_gaussians import ClassGaussians
from model_core.networks.class_stats import ClassStats, class_gaussians, eigen, ppca_entry, span_basis
from model_core.networks.gaussian_head import GaussianHead
from model_core.strategies.base import Strategy, TrainContext, register_strategy
from model_core.strategy_specs import SPECS

MIN_SAMPLES = SPECS["class_models"].min_new_class_samples  # 5: a new class's mean averages at least this many
MAX_INPUT_DIM = 4096  # raw-input values a from-scratch network's class models may span (64x64 grey)
HOLDOUT = 0.2  # share of each class of a job held out to choose the shrinkage and the rank
MIN_HELD_OUT = 10  # held-out rows below which the previous choice is kept
HOLD_OUT_FROM = 20  # rows of a class under which none of it is held out to choose (it keeps them all to fit)
PSEUDO_COUNTS = (0.0, 10.0, 30.0, 100.0, 300.0, math.inf)  # k of the share a = k / (k + median class count)
RANKS = (16, 32, 64)  # served principal directions per class (never D or more)
DEFAULT_PSEUDO = 10.0  # k before any held-out choice (a job too small to hold any out)


def rank_grid(dim: int) -> list[int]:
    """Ranks worth trying for vectors of ``dim`` values: ``RANKS`` below ``dim``, else ``dim - 1``."""
    return sorted({min(r, max(dim - 1, 1)) for r in RANKS})


@register_strategy
class ClassModels(Strategy):
    spec = SPECS["class_models"]
    gradient_steps = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.stats: ClassStats | None = None
        self.legacy = False  # state saved by the per-class PPCA mixtures fitted once (no statistics)
        self.chosen: dict[str, float] = {}  # pseudo_count, rank (and the held-out accuracy) of the last job

    def before_experience(self, ctx: TrainContext) -> None:
        if self.legacy:
            raise ValueError(
                "this classifier's class models were fitted before class_models kept running statistics, so they "
                "cannot take more samples or classes; start a new classifier and send its classes again"
            )
        blocks = ctx.model.heads[:-1] if ctx.new_units else ctx.model.heads
        if any(not isinstance(head, GaussianHead) for head in blocks):
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
        small = [u for u in sorted(ctx.new_units) if int(counts[u]) < MIN_SAMPLES]
        if small:
            raise ValueError(
                f"strategy 'class_models' needs at least {MIN_SAMPLES} samples of each new class (a class model's "
                f"means are averages, never a sample); output unit(s) {small} have "
                f"{[int(counts[u]) for u in small]}"
            )
        if self.stats is not None and self.stats.dim != dim:
            raise ValueError(f"the saved class models span {self.stats.dim} values; these samples have {dim}")

    def after_experience(self, ctx: TrainContext) -> None:
        x, y = ctx.data.x.reshape(len(ctx.data.x), -1), ctx.data.y
        stats = self.stats or ClassStats(int(x.shape[1]))
        present = torch.unique(y).tolist()
        held = self._hold_out(y, ctx.cpu_rng)
        if self.params["shrinkage"] is None or self.params["rank"] is None:
            if len(held) >= MIN_HELD_OUT:
                fit = stats.copy()
                keep = torch.ones(len(y), dtype=torch.bool)
                keep[held] = False
                for unit in present:
                    fit.add(unit, x[keep & (y == unit)])
                self.chosen = self._choose(fit, x[held], y[held], ctx)
            elif not self.chosen:
                grid = rank_grid(stats.dim)
                self.chosen = {"pseudo_count": DEFAULT_PSEUDO, "rank": float(grid[min(1, len(grid) - 1)])}
        for i, unit in enumerate(present):
            stats.add(unit, x[y == unit])
            ctx.report("train", i + 1, len(present))
            ctx.check_cancel()
        self.stats = stats
        models = class_gaussians(stats, self._rank(), self._amounts(stats, self._pseudo()))
        self._write_heads(ctx, models)

    def _hold_out(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """Row indices of a seeded ``HOLDOUT`` share of each class in ``y`` (none of a class under ``HOLD_OUT_FROM``
        rows, so a small class keeps every sample to fit)."""
        out = []
        for unit in torch.unique(y).tolist():
            rows = torch.nonzero(y == unit).flatten()
            if len(rows) >= HOLD_OUT_FROM:
                out.append(rows[torch.randperm(len(rows), generator=generator)[: int(len(rows) * HOLDOUT)]])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def _pseudo(self) -> float:
        return float(self.chosen.get("pseudo_count", DEFAULT_PSEUDO))

    def _rank(self) -> int:
        return int(self.params["rank"]) if self.params["rank"] is not None else int(self.chosen["rank"])

    def _amounts(self, stats: ClassStats, pseudo: float) -> dict[int, float]:
        fixed = self.params["shrinkage"]
        if fixed is not None:
            return {u: float(fixed) for u in stats.units}
        # one share for every class, from the median class size: a share by each class's own count gives a class of 5x
        # fewer samples more of the pooled shape than a larger one beside it, and the larger took its samples
        typical = float(np.median([stats.count[u] for u in stats.units])) if stats.units else 1.0
        share = 1.0 if pseudo == math.inf else pseudo / (pseudo + typical)
        return {u: share for u in stats.units}

    def _choose(self, fit: ClassStats, x: Tensor, y: Tensor, ctx: TrainContext) -> dict[str, float]:
        """The pseudo-count and rank whose models, fitted on ``fit``, classify the held-out ``x``, ``y`` best."""
        ranks = [int(self.params["rank"])] if self.params["rank"] is not None else rank_grid(fit.dim)
        pseudos = [0.0] if self.params["shrinkage"] is not None else list(PSEUDO_COUNTS)
        pooled, basis = fit.pooled(), span_basis(fit)
        floor = float(self.params["variance_floor"])
        best: tuple[float, float, float, int] | None = None
        for pseudo in pseudos:
            amounts = self._amounts(fit, pseudo)
            eig = {u: eigen(fit.covariance(u, amounts[u], pooled), basis) for u in fit.units}
            for rank in ranks:
                models = ClassGaussians(fit.dim, 1, rank, 1)
                models.classes = {u: ppca_entry(fit.mean[u], *eig[u], rank) for u in fit.units}
                logits = models.log_likelihood(x, floor) / math.sqrt(fit.dim)  # as GaussianHead serves them
                units = torch.tensor(fit.units)
                truth = torch.searchsorted(units, y)
                accuracy = float((logits.argmax(1) == truth).double().mean())
                log_post = float(logits.log_softmax(1).gather(1, truth[:, None]).mean())
                if best is None or (accuracy, log_post) > (best[0], best[1]):
                    best = (accuracy, log_post, pseudo, rank)
            ctx.check_cancel()
        assert best is not None
        return {"pseudo_count": best[2], "rank": float(best[3]), "held_out_accuracy": best[0]}

    def _write_heads(self, ctx: TrainContext, models: ClassGaussians) -> None:
        """Rebuild every head block from ``models`` (the pooled part changed them all), block for block."""
        prior = None
        if self.params["prior"] == "frequency":
            assert self.stats is not None
            prior = {u: math.log(n) for u, n in self.stats.count.items()}
        space = "input" if ctx.replays_inputs else "features"
        floor = float(self.params["variance_floor"])
        start = 0
        for i, block in enumerate(ctx.model.heads):
            assert isinstance(block, GaussianHead | nn.Linear)  # a class-model block, or the one this job added
            units: Sequence[int] = range(start, start + int(block.out_features))
            device = next(iter(block.buffers()), None)
            head = GaussianHead.from_models(models, list(units), space, floor, prior)
            ctx.model.heads[i] = head if device is None else head.to(device.device)
            start += len(units)

    def diagnostics(self) -> dict[str, Any]:
        if self.stats is None:
            return {}
        out: dict[str, Any] = {"samples": dict(self.stats.count), "rank": self._rank()}
        if self.params["shrinkage"] is None:
            out["pseudo_count"] = self._pseudo() if math.isfinite(self._pseudo()) else None  # None: infinite
            out["shrinkage"] = self._amounts(self.stats, self._pseudo())
        if "held_out_accuracy" in self.chosen:
            out["held_out_accuracy"] = self.chosen["held_out_accuracy"]
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.stats is None:
            return {}
        return {"stats": self.stats.state_dict(), "chosen": dict(self.chosen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if "stats" not in state:
            self.legacy = True
            return
        self.stats = ClassStats.from_state(state["stats"])
        self.chosen = {k: float(v) for k, v in state["chosen"].items()}
