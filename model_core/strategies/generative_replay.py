"""Deep generative replay with distillation (Shin et al. 2017; van de Ven et al. 2020).

No sample is stored: the generator's weights are the whole memory. For each experience:
- while training the classifier, every step adds a batch replayed from the generator (classes drawn
  uniformly from those it knows), labelled with the previous model's soft targets at temperature T, and
  mixed with the new data in proportion to the number of classes seen;
- afterwards the generator is trained on the new data plus its own replay of the old classes (from a
  frozen copy of itself), in the same proportion, so that it keeps every class.
The previous model is the parent version's network, the same one EWC anchors to and LwF distils from.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.config import InputSpec
from model_core.networks.generators import ConditionalVAE
from model_core.strategies.base import Batch, Strategy, TrainContext, mix, register_strategy
from model_core.strategies.importance import masked_log_softmax
from model_core.strategy_specs import SPECS

ARCH_KEYS = ("latent_dim", "hidden")


@register_strategy
class GenerativeReplay(Strategy):
    spec = SPECS["generative_replay"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.generator: ConditionalVAE | None = None
        self.known_units: list[int] = []  # classes (output units) the generator can produce
        self.frozen: ConditionalVAE | None = None  # generator as it was before this experience

    def _build(self, ctx: TrainContext, n_classes: int) -> ConditionalVAE:
        arch = {k: int(self.params[k]) for k in ARCH_KEYS}
        return ConditionalVAE(ctx.model.spec.input, n_classes, **arch).to(ctx.device)

    def _replay(self, ctx: TrainContext, n: int) -> tuple[Tensor, Tensor]:
        """n samples from the frozen generator: (x (n, *shape), unit (n,))."""
        assert self.frozen is not None
        known = torch.tensor(self.known_units, device=ctx.device)
        units = known[torch.randint(len(known), (n,), device=ctx.device, generator=ctx.rng)]
        return self.frozen.sample(units, ctx.rng, float(self.params["sample_temperature"])), units

    def before_experience(self, ctx: TrainContext) -> None:
        if self.generator is None:
            self.generator = self._build(ctx, ctx.num_units)
            self.generator.set_standardisation(ctx.data.x)
        self.generator.to(ctx.device)
        self.frozen = None
        if self.known_units and ctx.previous is not None:
            self.frozen = copy.deepcopy(self.generator).eval().requires_grad_(False)

    def augment(self, ctx: TrainContext, batch: Batch) -> Batch:
        if self.frozen is None or ctx.previous is None:
            return batch
        x, units = self._replay(ctx, len(batch))
        task = ctx.unit_task[units]
        t = float(self.params["temperature"])
        n_old = ctx.previous.num_units
        with torch.no_grad(), ctx.autocast():
            teacher = ctx.previous(x).float()  # (n, U_old)
        mask = ctx.unit_mask(task)  # (n, U)
        soft = masked_log_softmax(teacher / t, mask[:, :n_old]).exp() * mask[:, :n_old]
        targets = torch.zeros(len(x), ctx.num_units, device=ctx.device)
        targets[:, :n_old] = soft
        ones = torch.ones(len(x), device=ctx.device)
        replayed = Batch(x, targets, task, ones / len(x), ones * t, mask)
        return mix(batch, replayed, ctx.new_share)

    def after_experience(self, ctx: TrainContext) -> None:
        gen = self.generator
        assert gen is not None
        gen.expand_classes(ctx.num_units)
        gen.train()
        opt = torch.optim.Adam(gen.parameters(), lr=float(self.params["generator_lr"]), foreach=True)
        data = ctx.data
        bs = min(int(self.params["generator_batch"]), len(data))
        share = ctx.new_share
        total = int(self.params["generator_iterations"])
        for step in range(1, total + 1):
            idx = torch.randint(len(data), (bs,), generator=ctx.cpu_rng)
            x, y = data.x[idx].to(ctx.device), data.y[idx].to(ctx.device)
            w = torch.full((bs,), 1.0 / bs, device=ctx.device)
            if self.frozen is not None:
                rx, ry = self._replay(ctx, bs)
                x, y = torch.cat([x, rx]), torch.cat([y, ry])
                w = torch.cat([w * share, torch.full((bs,), (1 - share) / bs, device=ctx.device)])
            with ctx.autocast():
                loss, rec, kl = gen.loss(x, y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if step % 50 == 0 or step == total:
                ctx.report(
                    "generator",
                    step,
                    total,
                    loss=float(loss.detach()),
                    reconstruction=float(rec.detach()),
                    kl=float(kl.detach()),
                )
                ctx.check_cancel()
        gen.eval()
        self.known_units = sorted(set(self.known_units) | set(ctx.data.y.tolist()))
        self.frozen = None

    def state_dict(self) -> dict[str, Any]:
        if self.generator is None:
            return {}
        return {
            "arch": {k: int(self.params[k]) for k in ARCH_KEYS},
            "input": dataclasses.asdict(self.generator.input),
            "n_classes": self.generator.n_classes,
            "known_units": list(self.known_units),
            "weights": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.params.update(state["arch"])  # the saved generator's shape wins over new defaults
        gen = ConditionalVAE(InputSpec(**state["input"]), int(state["n_classes"]), **state["arch"])
        gen.load_state_dict(state["weights"])
        self.generator = gen.eval()
        self.known_units = [int(u) for u in state["known_units"]]
