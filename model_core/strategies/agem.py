"""Averaged gradient episodic memory, A-GEM (Chaudhry et al. 2019).

The memory is ``replay``'s class-balanced exemplar buffer, chosen and sized the same way, so the two are
compared on the same stored samples. Each step, after the backward pass, a reference gradient g_ref is taken
on a batch drawn from the memory; when the step's gradient g conflicts with it (g . g_ref < 0), g is projected
to g - (g . g_ref / g_ref . g_ref) g_ref, so that to first order the step does not raise the loss on the memory.

``memory="reference"`` is the published method: the memory only constrains the step. In class-incremental
learning that alone cannot teach an old class apart from a new one (nothing trains the old units against the
new), so ``memory="replay"`` also trains on memory rows, mixed in as ``replay`` mixes them, and keeps the
projection (as the A-GEM paper's and van de Ven et al.'s class-incremental variants do).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.strategies.base import Batch, Strategy, TrainContext, mix, register_strategy
from model_core.strategies.buffers import ClassBalancedBuffer, remember
from model_core.strategies.importance import masked_log_softmax
from model_core.strategy_specs import SPECS


def memory_loss(ctx: TrainContext, net: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of memory rows, each over the units its task competes among (ctx.unit_mask)."""
    mask = ctx.unit_mask(ctx.unit_task[y])
    with ctx.autocast():
        logits = net(x)
    return -masked_log_softmax(logits.float(), mask).gather(1, y[:, None]).mean()


def trainable(net: torch.nn.Module) -> list[Tensor]:
    return [p for p in net.parameters() if p.requires_grad]


def flat_grad(params: list[Tensor], grads: list[Tensor | None] | None = None) -> Tensor:
    """The gradients (``grads``, else each parameter's ``.grad``) as one flat vector, zeros where none."""
    grads = [p.grad for p in params] if grads is None else grads
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten().float() for p, g in zip(params, grads, strict=True)])


def write_grad(params: list[Tensor], flat: Tensor) -> None:
    """Put a flat gradient vector back into the parameters' ``.grad``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def reference_gradient(ctx: TrainContext, net: torch.nn.Module, params: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Flat gradient of the memory loss on (x, y), leaving the step's ``.grad`` untouched."""
    grads = torch.autograd.grad(memory_loss(ctx, net, x, y), params, allow_unused=True)
    return flat_grad(params, list(grads))


def memory_rows(x: Tensor | None, y: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """All of the memory when it holds at most ``n`` rows (an exact reference), else ``n`` drawn without replacement."""
    assert x is not None
    if len(y) <= n:
        return x, y
    idx = torch.randperm(len(y), generator=generator)[:n]
    return x[idx], y[idx]


def project_agem(g: Tensor, g_ref: Tensor) -> Tensor:
    """g unchanged when it agrees with g_ref; otherwise g minus its component along g_ref."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - (dot / torch.dot(g_ref, g_ref).clamp_min(1e-20)) * g_ref


@register_strategy
class AGEM(Strategy):
    spec = SPECS["agem"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        per_class = self.params["per_class"]
        self.buffer = ClassBalancedBuffer(None if per_class is None else int(per_class), self.params["max_total"])
        self.steps, self.projected = 0, 0

    def before_experience(self, ctx: TrainContext) -> None:
        self.steps, self.projected = 0, 0

    def augment(self, ctx: TrainContext, batch: Batch) -> Batch:
        if self.params["memory"] != "replay" or len(self.buffer) == 0:
            return batch
        x, y = self.buffer.sample(ctx.replay_rows(len(batch)), ctx.cpu_rng)
        x, y = x.to(ctx.device), y.to(ctx.device)
        return mix(batch, ctx.labelled_batch(x, y, ctx.unit_task[y]), ctx.new_share)

    def before_step(self, ctx: TrainContext, net: torch.nn.Module) -> None:
        if len(self.buffer) == 0:
            return
        x, y = memory_rows(self.buffer.x, self.buffer.y, int(self.params["memory_batch"]), ctx.cpu_rng)
        params = trainable(net)
        g_ref = reference_gradient(ctx, net, params, x.to(ctx.device), y.to(ctx.device))
        g = flat_grad(params)
        projected = project_agem(g, g_ref)
        self._apply(projected is not g, params, projected)

    def _apply(self, changed: bool, params: list[Tensor], projected: Tensor) -> None:
        """Write a changed gradient back and count the step."""
        self.steps += 1
        if changed:
            self.projected += 1
            write_grad(params, projected)

    def after_experience(self, ctx: TrainContext) -> None:
        remember(self.buffer, ctx, self.params["selection"])

    def diagnostics(self) -> dict[str, Any]:
        """How often the last experience's steps conflicted with the memory and were projected."""
        return {"projected_steps": self.projected, "steps": self.steps}

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state)
