"""Generative replay with distillation (Shin et al. 2017; van de Ven et al. 2020): old classes are replayed
from a generator, never from stored samples.

Two generator kinds (parameter ``generator``):
- ``class_gaussians`` (default): one mixture of probabilistic PCA models per class, fitted in closed form on
  that class's real data when the class is first learned and frozen from then on
  (``model_core.networks.class_gaussians``). Learning a new class cannot damage an old class's model, so
  replay does not decay as tasks are added.
- ``vae``: one class-conditional VAE retrained every experience on the new data plus its own replay of the old
  classes (the classic deep generative replay); kept for comparison (python -m benchmarks.continual).

Replay happens in the space the trainable part of the network consumes: the input for a network that trains
end to end, the frozen backbone's features for a pretrained frozen backbone (the trainer then hands every
strategy features instead of inputs), as brain-inspired replay does on frozen layers.

While the classifier trains, every step adds rows replayed from the generator, as many per old class as the
step has per new class (``TrainContext.replay_rows``; the old classes in equal shares), labelled with the previous model's soft targets at temperature T mixed with the class the sample
was drawn for (``hard_weight``), in proportion to the number of classes seen. The previous model is the
parent version's network, the same one EWC anchors to and LwF distils from.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model_core.config import InputSpec
from model_core.networks.class_gaussians import ClassGaussians
from model_core.networks.generators import ConditionalVAE
from model_core.strategies.base import Batch, Strategy, TrainContext, mix, register_strategy
from model_core.strategies.importance import masked_log_softmax
from model_core.strategy_specs import SPECS

VAE_ARCH = ("latent_dim", "hidden")
GAUSSIAN_ARCH = ("components", "rank")
QUALITY_SAMPLES = 100  # replayed samples per old class behind the generator quality figure (up to QUALITY_BUDGET)
# Replayed samples behind the quality figures of all old classes together, past 100 classes: each is scored over
# every old class, so QUALITY_SAMPLES of each would cost classes^2 per job; the figure is a per-class accuracy that
# names a generator which lost a class (well below the classifier's own), for which QUALITY_MIN samples suffice.
QUALITY_BUDGET = 10_000
QUALITY_MIN = 10
QUALITY_CHUNK = 4096  # replayed rows per pass of the previous model
PROBE_ROWS = 500  # real rows (and as many replayed) behind the replay-artefact probe


def quality_samples(old_classes: int) -> int:
    """Replayed samples of each old class behind its quality figure: QUALITY_SAMPLES up to 100 old classes, then
    QUALITY_BUDGET shared among them (at least QUALITY_MIN each): linear in the classes learnt up to 1,000."""
    return max(QUALITY_MIN, min(QUALITY_SAMPLES, QUALITY_BUDGET // max(old_classes, 1)))


@register_strategy
class GenerativeReplay(Strategy):
    spec = SPECS["generative_replay"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.vae: ConditionalVAE | None = None
        self.gaussians: ClassGaussians | None = None
        self.known_units: list[int] = []  # classes (output units) the generator can produce
        self.frozen: ConditionalVAE | None = None  # the VAE as it was before this experience
        self.quality: dict[int, float] = {}
        self.artefact: float | None = None  # the replay-artefact probe's held-out accuracy

    @property
    def kind(self) -> str:
        return str(self.params["generator"])

    # --- sampling -------------------------------------------------------------------------------

    def _sample(self, ctx: TrainContext, units: Tensor) -> Tensor:
        """Replayed samples of ``units`` (n,), shaped like the training data's rows."""
        shape = tuple(ctx.data.x.shape[1:])
        if self.kind == "class_gaussians":
            assert self.gaussians is not None
            x = self.gaussians.sample(units, ctx.rng, float(self.params["noise_scale"]), str(self.params["noise"]))
            x = x.reshape(len(units), *shape)
            return x.clamp(0.0, 1.0) if ctx.replays_inputs and ctx.model.spec.input.kind == "image" else x
        assert self.frozen is not None
        return self.frozen.sample(units, ctx.rng, float(self.params["sample_temperature"])).reshape(len(units), *shape)

    def _replay_units(self, ctx: TrainContext, n: int) -> Tensor:
        """``n`` old units, each old class as often as the others (to within one), in random order."""
        known = torch.tensor(self.known_units, device=ctx.device)
        offset = int(torch.randint(len(known), (1,), device=ctx.device, generator=ctx.rng))
        units = known[(torch.arange(n, device=ctx.device) + offset) % len(known)]
        return units[torch.randperm(n, device=ctx.device, generator=ctx.rng)]

    @property
    def _can_replay(self) -> bool:
        return bool(self.known_units) and (self.kind == "class_gaussians" or self.frozen is not None)

    # --- hooks ----------------------------------------------------------------------------------

    def before_experience(self, ctx: TrainContext) -> None:
        self.quality = {}
        if self.kind == "vae":
            if self.vae is None:
                self.vae = self._build_vae(ctx, ctx.num_units)
                self.vae.set_standardisation(ctx.data.x)
            self.vae.to(ctx.device)
            self.frozen = None
            if self.known_units and ctx.previous is not None:
                self.frozen = copy.deepcopy(self.vae).eval().requires_grad_(False)
        elif self.gaussians is None:
            self.gaussians = ClassGaussians(
                int(ctx.data.x[0].numel()), int(self.params["components"]), int(self.params["rank"])
            )
        if self._can_replay and ctx.previous is not None:
            self.quality = self._measure_quality(ctx)

    @torch.no_grad()
    def _measure_quality(self, ctx: TrainContext) -> dict[int, float]:
        """The previous model's accuracy on replayed samples of each old class (among the old units, or within
        the class's task head in task-incremental learning): a low figure means the generator lost the class."""
        assert ctx.previous is not None
        n_old = ctx.previous.num_units
        each = quality_samples(len(self.known_units))
        known = torch.tensor(self.known_units, device=ctx.device)
        # whole classes a chunk, drawn unit by unit in order (as ClassGaussians.sample draws them, so the random
        # numbers are those of one draw per class), the previous model over each chunk: not a pass per class
        per_chunk = max(1, QUALITY_CHUNK // each)
        share: list[float] = []
        for a in range(0, len(known), per_chunk):
            units = known[a : a + per_chunk].repeat_interleave(each)
            with ctx.autocast():
                logits = ctx.previous(self._sample(ctx, units)).float()
            mask = ctx.unit_mask(ctx.unit_task[units])[:, :n_old]
            right = logits.masked_fill(~mask, float("-inf")).argmax(1) == units
            share += right.view(-1, each).float().mean(1).tolist()
        return {unit: round(float(v), 4) for unit, v in zip(self.known_units, share, strict=True)}

    def augment(self, ctx: TrainContext, batch: Batch) -> Batch:
        if not self._can_replay or ctx.previous is None:
            return batch
        units = self._replay_units(ctx, ctx.replay_rows(len(batch)))
        x = self._sample(ctx, units)
        task = ctx.unit_task[units]
        t = float(self.params["temperature"])
        n_old = ctx.previous.num_units
        with torch.no_grad(), ctx.autocast():
            teacher = ctx.previous(x).float()  # (n, U_old)
        mask = ctx.unit_mask(task)  # (n, U)
        soft = masked_log_softmax(teacher / t, mask[:, :n_old]).exp() * mask[:, :n_old]
        hard = torch.zeros_like(soft)
        hard[torch.arange(len(x), device=x.device), units] = 1.0
        w = float(self.params["hard_weight"])
        targets = torch.zeros(len(x), ctx.num_units, device=ctx.device)
        targets[:, :n_old] = (1 - w) * soft + w * hard
        ones = torch.ones(len(x), device=ctx.device)
        replayed = Batch(x, targets, task, ones / len(x), ones * t, mask)
        return mix(batch, replayed, ctx.new_share)

    def after_experience(self, ctx: TrainContext) -> None:
        if self.kind == "class_gaussians":
            assert self.gaussians is not None
            ctx.report("generator", 0, 1)
            for unit in sorted(set(ctx.data.y.tolist())):
                self.gaussians.fit_class(unit, ctx.data.x[ctx.data.y == unit], ctx.cpu_rng)
            ctx.report("generator", 1, 1)
        else:
            self._train_vae(ctx)
        self.known_units = sorted(set(self.known_units) | set(ctx.data.y.tolist()))
        self.artefact = self._probe_artefact(ctx)
        self.frozen = None

    @torch.no_grad()
    def _probe_artefact(self, ctx: TrainContext) -> float | None:
        """How well a linear probe on the classifier's features tells this experience's real samples from the
        generator's replay of the same classes, on rows it was not fitted on: about 0.5 when replay looks real
        to the classifier; near 1 when the replay carries an artefact the classifier can learn as "old"
        (isotropic pixel noise on 784-pixel digits scored 1.0). Measured for the class-Gaussian generator, whose
        models of the new classes are fitted by now (the VAE's replay comes from its copy before this experience)."""
        if not self._can_replay or self.kind != "class_gaussians":
            return None
        g = torch.Generator().manual_seed(ctx.config.seed + 5)
        n = min(len(ctx.data), PROBE_ROWS)
        rows = torch.randperm(len(ctx.data), generator=g)[:n]
        real = ctx.data.x[rows].to(ctx.device)
        fake = self._sample(ctx, ctx.data.y[rows].to(ctx.device))  # the same classes, as many of each
        net = ctx.model
        net.eval()
        f = torch.cat([net.forward_features(real), net.forward_features(fake)]).double().cpu()
        target = torch.cat([torch.ones(n), -torch.ones(n)]).double()
        order = torch.randperm(2 * n, generator=g)
        fit, held = order[: n], order[n:]
        mean, std = f[fit].mean(0), f[fit].std(0).clamp_min(1e-6)
        z = torch.cat([(f - mean) / std, torch.ones(2 * n, 1, dtype=torch.float64)], 1)
        a = z[fit]
        w = torch.linalg.solve(a.T @ a + torch.eye(z.shape[1], dtype=torch.float64) * len(fit) * 1e-2, a.T @ target[fit])
        return round(float(((z[held] @ w).sign() == target[held]).double().mean()), 4)

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"replay_accuracy": dict(self.quality)} if self.quality else {}
        if self.artefact is not None:
            out["replay_artefact_probe"] = self.artefact
        return out

    # --- the VAE --------------------------------------------------------------------------------

    def _build_vae(self, ctx: TrainContext, n_classes: int) -> ConditionalVAE:
        arch = {k: int(self.params[k]) for k in VAE_ARCH}
        shape = tuple(ctx.data.x.shape[1:])
        space = ctx.model.spec.input if ctx.replays_inputs else InputSpec("vector", dim=int(ctx.data.x[0].numel()))
        assert space.shape == shape
        return ConditionalVAE(space, n_classes, **arch).to(ctx.device)

    def _train_vae(self, ctx: TrainContext) -> None:
        """Train the VAE on the new data plus its own replay of the old classes, in the classes' proportion."""
        gen = self.vae
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
                ry = self._replay_units(ctx, bs)
                x, y = torch.cat([x, self._sample(ctx, ry)]), torch.cat([y, ry])
                w = torch.cat([w * share, torch.full((bs,), (1 - share) / bs, device=ctx.device)])
            with ctx.autocast():
                loss, rec, kl = gen.loss(x, y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if step % 50 == 0 or step == total:
                ctx.report("generator", step, total, loss=float(loss.detach()), reconstruction=float(rec.detach()),
                           kl=float(kl.detach()))  # fmt: skip
                ctx.check_cancel()
        gen.eval()

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"known_units": list(self.known_units), "generator": self.kind}
        if self.gaussians is not None:
            state["gaussians"] = self.gaussians.state_dict()
        if self.vae is not None:
            state["vae"] = {
                "arch": {k: int(self.params[k]) for k in VAE_ARCH},
                "input": {"kind": self.vae.input.kind, "channels": self.vae.input.channels,
                          "height": self.vae.input.height, "width": self.vae.input.width, "dim": self.vae.input.dim},
                "n_classes": self.vae.n_classes,
                "weights": {k: v.detach().cpu() for k, v in self.vae.state_dict().items()},
            }  # fmt: skip
        return state if (self.gaussians is not None or self.vae is not None) else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        saved = str(state.get("generator", "vae"))
        if saved != self.kind and self.known_units == [] and state.get("known_units"):
            # The classes already learned live in the saved generator: its kind wins over a new default.
            self.params["generator"] = saved
        if "gaussians" in state:
            self.gaussians = ClassGaussians.from_state(state["gaussians"])
            self.params.update({k: self.gaussians.__dict__[k] for k in GAUSSIAN_ARCH})
        vae = state.get("vae") or ({"arch": state["arch"], "input": state["input"], "n_classes": state["n_classes"],
                                    "weights": state["weights"]} if "weights" in state else None)  # fmt: skip
        if vae is not None:
            self.params.update(vae["arch"])  # the saved generator's shape wins over new defaults
            gen = ConditionalVAE(InputSpec(**vae["input"]), int(vae["n_classes"]), **vae["arch"])
            gen.load_state_dict(vae["weights"])
            self.vae = gen.eval()
        self.known_units = [int(u) for u in state["known_units"]]
