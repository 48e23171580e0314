"""A-GEM and GEM (gradient projection on an exemplar memory) and IMM (moment matching): each one's own behaviour.

The checks every strategy gets (learns, saves, is deterministic) are in test_strategies.py.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from model_core.data import SplitBenchmark
from model_core.learner import Learner
from model_core.strategies import create_strategy
from model_core.strategies.agem import AGEM, flat_grad, project_agem, reference_gradient, trainable, write_grad
from model_core.strategies.base import LabeledData, TrainContext
from model_core.strategies.gem import project_gem
from model_core.strategies.imm import IMM, merge
from service.domain.commands import Learn
from service.domain.errors import Invalid
from tests.conftest import FAST, digit_spec


def context(learner: Learner, x: torch.Tensor, y: torch.Tensor, previous: torch.nn.Module | None = None) -> TrainContext:
    data = LabeledData(x, y, torch.zeros(len(y), dtype=torch.long))
    return TrainContext(
        model=learner.model, previous=previous, scenario=learner.scenario, config=FAST,  # type: ignore[arg-type]
        device=torch.device("cpu"), data=data, unit_task=learner.unit_task(), new_units=[],
        rng=torch.Generator().manual_seed(0), cpu_rng=torch.Generator().manual_seed(0),
    )  # fmt: skip


def conflicting(g_ref: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A gradient as long as g_ref whose dot with it is clearly negative."""
    noise = torch.randn(g_ref.shape, generator=torch.Generator().manual_seed(seed))
    return noise / noise.norm() * g_ref.norm() - g_ref


# --- A-GEM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
def test_agem_step_does_not_raise_the_memory_loss_to_first_order(scenario: str, digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(scenario), seed=0)
    learner.learn(digits.train[0], "naive", None, FAST)
    exp = digits.train[0]
    ctx = context(learner, exp.x, exp.y)
    agem = AGEM(memory_batch=1000)  # the whole memory: the same reference in the hook and here
    agem.buffer.add(exp.x, exp.y, torch.Generator().manual_seed(0))
    net, params = learner.model, trainable(learner.model)
    g_ref = reference_gradient(ctx, net, params, agem.buffer.x, agem.buffer.y)  # type: ignore[arg-type]
    raw = conflicting(g_ref)
    assert torch.dot(raw, g_ref) < 0
    write_grad(params, raw)
    agem.before_step(ctx, net)
    projected = flat_grad(params)
    assert torch.dot(projected, g_ref) >= -1e-6
    assert not torch.allclose(projected, raw) and agem.diagnostics() == {"projected_steps": 1, "steps": 1}
    agreeing = raw + 3 * g_ref  # a gradient that helps the memory is left as it is
    assert torch.dot(agreeing, g_ref) > 0 and torch.equal(project_agem(agreeing, g_ref), agreeing)


# --- GEM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_projection_agrees_with_every_old_task(margin: float) -> None:
    gen = torch.Generator().manual_seed(1)
    old = torch.randn(4, 300, generator=gen)  # one gradient per old task
    g = -old[0] - 0.5 * old[2] + 0.1 * torch.randn(300, generator=gen)
    assert (old @ g).min() < 0
    z = project_gem(g, old, margin)
    assert ((old @ z) / (old.norm(dim=1) * z.norm())).min() >= -1e-6
    if margin == 0:  # the closest such z: no smaller change satisfies the constraints along the way to g
        for t in torch.linspace(0.05, 0.95, 10):
            assert (old @ (g + t * (z - g))).min() < 0
    fine = old.sum(0)
    assert (old @ fine).min() >= 0 and torch.equal(project_gem(fine, old), fine)


def test_gem_uses_one_constraint_per_old_task(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("task-incremental"), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, "gem", {"memory": "reference"}, FAST)
    gem = create_strategy("gem")
    gem.load_state_dict(learner.strategy_states["gem"])
    ctx = context(learner, digits.train[2].x, digits.train[2].y)
    params = trainable(learner.model)
    refs = [reference_gradient(ctx, learner.model, params, gem.buffer.x[gem.buffer.y // 2 == t],  # type: ignore[attr-defined]
                               gem.buffer.y[gem.buffer.y // 2 == t]) for t in (0, 1)]  # type: ignore[attr-defined]  # fmt: skip
    raw = conflicting(refs[0]) + conflicting(refs[1], 1)
    assert min(float(torch.dot(raw, ref)) for ref in refs) < 0
    write_grad(params, raw)
    gem.params["memory_batch"] = 1000  # every exemplar: the same references as here
    gem.before_step(ctx, learner.model)
    for ref in refs:
        assert torch.dot(flat_grad(params), ref) >= -1e-6 * ref.norm() * flat_grad(params).norm()


# --- IMM -------------------------------------------------------------------------------------------


def test_mean_imm_is_the_weighted_average_and_mode_imm_lies_between() -> None:
    gen = torch.Generator().manual_seed(2)
    old, new = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    f_old, f_new = torch.rand(50, generator=gen), torch.rand(50, generator=gen)
    assert torch.allclose(merge(old, new, 0.5), (old + new) / 2)
    mode = merge(old, new, 0.75, f_old, f_new)
    lo, hi = torch.minimum(old, new), torch.maximum(old, new)
    assert bool(((mode >= lo - 1e-6) & (mode <= hi + 1e-6)).all())
    assert not torch.allclose(mode, merge(old, new, 0.75))  # the Fishers moved it
    assert torch.allclose(merge(old, new, 0.75, f_old, f_old), merge(old, new, 0.75), atol=1e-6)
    zero = torch.zeros(50)  # no information on either side: the mean
    assert torch.allclose(merge(old, new, 0.75, zero, zero), merge(old, new, 0.75))


def test_imm_merges_shared_weights_and_keeps_a_new_head_block_new(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "imm", {"mode": "mean"}, FAST)
    previous = copy.deepcopy(learner.model)
    learner.learn(digits.train[1], "naive", None, FAST)  # the new solution, unmerged
    trained = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    imm = IMM(mode="mean")
    imm.load_state_dict(learner.strategy_states["imm"])
    imm.after_experience(context(learner, digits.train[1].x, digits.train[1].y, previous))
    old = dict(previous.named_parameters())
    for name, p in learner.model.named_parameters():
        want = (old[name] + trained[name]) / 2 if name in old else trained[name]  # one old task: a = 1/2
        assert torch.allclose(p, want, atol=1e-6), name
    assert "heads.1.weight" not in old and imm.tasks == 2


def test_imm_state_round_trips_as_plain_tensors(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("task-incremental"), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, "imm", {"fisher_samples": 50}, FAST)
    buf = io.BytesIO()
    torch.save(learner.strategy_states["imm"], buf)
    buf.seek(0)
    imm = IMM()
    imm.load_state_dict(torch.load(buf, weights_only=True))
    assert imm.tasks == 2 and set(imm.fisher) == {k for k, _ in learner.model.named_parameters()}
    assert all(torch.equal(imm.fisher[k], v) for k, v in learner.strategy_states["imm"]["fisher"].items())
    assert min(float(f.min()) for f in imm.fisher.values()) >= 0


# --- the service refuses them when the data must not be kept ---------------------------------------


@pytest.mark.parametrize("strategy", ["agem", "gem"])
def test_discard_retention_refuses_exemplar_memories_naming_one_that_works(strategy: str) -> None:
    from service.application.learning import LearningService

    req = Learn(task="t", strategy=strategy, samples=[], retention="discard")
    with pytest.raises(Invalid, match=f"strategy '{strategy}' keeps training samples.*use generative_replay.*imm"):
        LearningService._strategy(req, digit_spec().to_dict(), None)
    keep = Learn(task="t", strategy=strategy, samples=[], retention="keep")
    assert LearningService._strategy(keep, digit_spec().to_dict(), None)[0] == strategy
