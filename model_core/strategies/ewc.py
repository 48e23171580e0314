"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), separate and online (Schwarz et al. 2018).

Penalty: (lambda / 2) * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2. The 1/2 comes from the Laplace
approximation: -log p(theta | old data) ~ 1/2 (theta - theta*)^T F (theta - theta*), so ``ewc_lambda``
scales the log-posterior exactly and values are comparable with the papers and Avalanche.

- ``mode="separate"`` keeps one (Fisher, anchor) pair per experience.
- ``mode="online"`` keeps one running Fisher, F <- decay * F + F_new, anchored at the parent version's
  weights (the same weights every other strategy uses as "previous": stored once, in the bundle).
- ``fisher="true"`` samples labels from the model's own predictive distribution (the true Fisher);
  ``fisher="empirical"`` uses the data's labels instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.strategies.base import Batch, Strategy, TrainContext, register_strategy
from model_core.strategies.importance import (
    masked_log_softmax,
    model_labelled,
    per_sample_importance,
    previous_params,
    quadratic_penalty,
    subsample,
)
from model_core.strategy_specs import SPECS


@register_strategy
class EWC(Strategy):
    spec = SPECS["ewc"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["mode"] not in ("separate", "online"):
            raise ValueError("ewc mode must be 'separate' or 'online'")
        if self.params["fisher"] not in ("true", "empirical"):
            raise ValueError("ewc fisher must be 'true' or 'empirical'")
        self.fishers: list[dict[str, Tensor]] = []
        self.anchors: list[dict[str, Tensor]] = []  # separate mode only

    def penalty(self, ctx: TrainContext, batch: Batch, logits: Tensor) -> Tensor:
        if not self.fishers or ctx.previous is None:
            return logits.new_zeros((), dtype=torch.float32)
        anchors = self.anchors if self.params["mode"] == "separate" else [previous_params(ctx)]
        total = sum(
            (quadratic_penalty(ctx, f, a) for f, a in zip(self.fishers, anchors, strict=True)),
            torch.zeros((), device=ctx.device),
        )
        return 0.5 * float(self.params["ewc_lambda"]) * total

    def after_experience(self, ctx: TrainContext) -> None:
        data = subsample(ctx, ctx.data, int(self.params["fisher_samples"]))
        if self.params["fisher"] == "true":
            data = model_labelled(ctx, data)

        def nll(logits: Tensor, mask: Tensor, y: Tensor) -> Tensor:
            return -masked_log_softmax(logits, mask).gather(1, y[:, None]).sum()

        fisher = per_sample_importance(ctx, data, nll, "square")
        if self.params["mode"] == "separate":
            self.fishers.append(fisher)
            self.anchors.append({k: v.detach().cpu().clone() for k, v in ctx.model.named_parameters()})
        elif not self.fishers:
            self.fishers = [fisher]
        else:  # F <- decay * F + F_new; a head block new since then starts from its new Fisher
            decay, old = float(self.params["decay"]), self.fishers[0]
            self.fishers = [{k: f + decay * old[k] if k in old else f for k, f in fisher.items()}]

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.params["mode"], "fishers": self.fishers, "anchors": self.anchors}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if state["mode"] != self.params["mode"]:
            raise ValueError(
                f"this classifier's EWC state was built in {state['mode']!r} mode; "
                f"keep mode={state['mode']!r} (asked for {self.params['mode']!r})"
            )
        self.fishers = [dict(f) for f in state["fishers"]]
        self.anchors = [dict(a) for a in state["anchors"]]
