"""Per-parameter importance from per-sample gradients (EWC's Fisher, MAS's sensitivity).

Per-sample gradients (``torch.func.vmap`` over ``grad``) matter for the Fisher: it is the mean of each
sample's squared gradient, not the square of the batch gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from model_core.strategies.base import LabeledData, TrainContext

# Loss of one sample: logits (1, U), allowed-unit mask (1, U) bool, target unit (1,) -> scalar.
SampleLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


def subsample(ctx: TrainContext, data: LabeledData, max_samples: int) -> LabeledData:
    """At most ``max_samples`` rows of ``data``, drawn without replacement with the context's rng."""
    if len(data) <= max_samples:
        return data
    idx = torch.randperm(len(data), generator=ctx.cpu_rng)[:max_samples]
    return LabeledData(data.x[idx], data.y[idx], data.task[idx])


def model_labelled(ctx: TrainContext, data: LabeledData) -> LabeledData:
    """``data`` with each label replaced by one drawn from the model's own prediction over the row's units: the
    labels of the true Fisher (the empirical one keeps the data's)."""
    with torch.no_grad(), ctx.autocast():
        y = []
        for mb in ctx.iterate_minibatches(data, 512):
            mask = ctx.unit_mask(mb.task)
            probs = masked_log_softmax(ctx.model(mb.x).float(), mask).exp() * mask
            y.append(torch.multinomial(probs, 1, generator=ctx.rng).flatten().cpu())
    return LabeledData(data.x, torch.cat(y), data.task)


def _chunk_size(n_params: int) -> int:
    """Samples per vmap call, keeping the per-sample gradients near 256 MiB of float32."""
    return max(1, min(256, (64 * 2**20) // max(n_params, 1)))


def per_sample_importance(
    ctx: TrainContext, data: LabeledData, loss: SampleLoss, reduce: Literal["square", "abs"]
) -> dict[str, Tensor]:
    """Mean over samples of (grad loss)^2 or |grad loss|, per parameter, on the cpu."""
    model = ctx.model
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p: dict[str, Tensor], x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (x[None],))
        return loss(logits.float(), ctx.unit_mask(task[None]), y[None])

    per_sample = vmap(grad(one), in_dims=(None, 0, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    chunk = _chunk_size(sum(v.numel() for v in params.values()))
    seen = 0
    for i, mb in enumerate(ctx.iterate_minibatches(data, chunk)):
        grads = per_sample(params, mb.x, mb.y, mb.task)  # each (b, *param.shape)
        for k, g in grads.items():
            total[k] += (g.square() if reduce == "square" else g.abs()).sum(0)
        seen += len(mb)
        ctx.report("importance", seen, len(data))
        if i % 4 == 3:
            ctx.check_cancel()
    model.train(was_training)
    return {k: (v / max(seen, 1)).cpu() for k, v in total.items()}


def masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).masked_fill(~mask, 0.0)


def quadratic_penalty(ctx: TrainContext, weights: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    """sum_k w_k (theta_k - anchor_k)^2 over the parameters named in ``weights``."""
    total = torch.zeros((), device=ctx.device)
    for name, p in ctx.model.named_parameters():
        w = weights.get(name)
        if w is None:
            continue  # a head block added after the importances were measured
        a = anchor[name]
        total = total + (w.to(ctx.device) * (p - a.to(ctx.device)).square()).sum()
    return total


def previous_params(ctx: TrainContext) -> dict[str, Tensor]:
    """The parent version's parameters: the anchor for online EWC and MAS."""
    assert ctx.previous is not None
    return {k: v.detach() for k, v in ctx.previous.named_parameters()}
