"""Every registered strategy through the same checks, then each one's own behaviour."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import replace

import pytest
import torch

from model_core.config import TrainConfig
from model_core.data import Experience, SplitBenchmark
from model_core.learner import Learner
from model_core.strategies import STRATEGIES, create_strategy
from model_core.strategies.base import LabeledData, Progress, TrainContext
from model_core.strategies.buffers import ClassBalancedBuffer, herding_order
from model_core.strategy_specs import SPECS
from model_core.trainer import seed_everything
from tests.conftest import FAST, digit_spec
from tests.unit.support import SMALL


def frozen(learner: Learner) -> Learner:
    """The learner with its backbone frozen, as a pretrained one is (the analytic head needs it)."""
    learner.model.backbone.requires_grad_(False)
    return learner


def fresh(name: str, scenario: str) -> Learner:
    learner = Learner.create(digit_spec(scenario), seed=3)
    return frozen(learner) if name == "analytic" else learner


def two_tasks(learner: Learner, digits: SplitBenchmark, strategy: str, config: TrainConfig = FAST) -> Learner:
    for exp in digits.train[:2]:
        learner.learn(exp, strategy, SMALL.get(strategy), config)
    return learner


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_learns_saves_and_is_deterministic(name: str, scenario: str, digits: SplitBenchmark) -> None:
    if STRATEGIES[name].spec.needs_tasks and scenario == "class-incremental":
        with pytest.raises(ValueError, match="task-incremental classifiers only"):  # tests/unit/test_task_networks.py
            fresh(name, scenario).learn(digits.train[0], name, None, FAST)
        return
    runs = [two_tasks(fresh(name, scenario), digits, name) for _ in range(2)]
    a, b = runs
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), f"{name}: {k} differs between two runs with the same seed"
    assert a.labels == ["0", "1", "2", "3"]
    # learned something: clearly above chance on the two tasks together (quality: tests/integration)
    chance = 0.25 if scenario == "class-incremental" else 0.5
    if scenario == "class-incremental" and not SPECS[name].adds_classes:  # it keeps about one task (imm: less)
        assert a.accuracy(digits.test[1]) > chance + 0.15
    else:
        assert (a.accuracy(digits.test[0]) + a.accuracy(digits.test[1])) / 2 > chance + 0.15
    # state is plain data: it survives torch.save / torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(a.strategy_states, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    create_strategy(name, SMALL.get(name)).load_state_dict(restored[name])


def test_unknown_strategy_and_parameter_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        create_strategy("si")
    with pytest.raises(ValueError, match="no parameter"):
        create_strategy("ewc", {"lambda": 1})
    # values are checked against their default's kind too, so a learn request is refused before it is queued
    bad = [("replay", "per_class", "many"), ("replay", "per_class", 2.5), ("replay", "per_class", True),
           ("replay", "max_total", 0), ("replay", "selection", "best"), ("ewc", "mode", "sideways"),
           ("ewc", "ewc_lambda", -1.0), ("lwf", "alpha", float("nan")), ("lwf", "temperature", 0),
           ("generative_replay", "hidden", 0), ("mas", "mas_lambda", None)]  # fmt: skip
    for name, key, value in bad:
        with pytest.raises(ValueError, match=f"parameter '{key}' must be"):
            create_strategy(name, {key: value})
    create_strategy("replay", {"per_class": 5, "max_total": None, "selection": "random", "distill_alpha": 0})
    create_strategy("ewc", {"ewc_lambda": 0, "mode": "online", "decay": 0.5, "fisher": "empirical"})


def test_specs_describe_every_registered_strategy() -> None:
    assert set(SPECS) == set(STRATEGIES)
    assert all(cls.spec is SPECS[name] for name, cls in STRATEGIES.items())
    assert {n for n, s in SPECS.items() if s.stores_data} == {"replay", "joint", "agem", "gem"}
    assert {n for n, s in SPECS.items() if not s.adds_classes} == {
        "naive", "ewc", "lwf", "mas", "imm", "packnet", "progressive"}
    assert {n for n, s in SPECS.items() if s.needs_tasks} == {"packnet", "progressive"}


def test_strategy_specs_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, model_core.strategy_specs, service.inference.inputs; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def make_ctx(learner: Learner, exp: Experience, previous: torch.nn.Module | None) -> TrainContext:
    units = torch.tensor([learner.labels.index(c) for c in exp.classes])
    data = LabeledData(exp.x, units[exp.y], torch.zeros(len(exp), dtype=torch.long))
    return TrainContext(
        model=learner.model, previous=previous, scenario=learner.scenario, config=FAST,  # type: ignore[arg-type]
        device=torch.device("cpu"), data=data, unit_task=learner.unit_task(), new_units=[],
        rng=torch.Generator().manual_seed(0), cpu_rng=torch.Generator().manual_seed(0),
    )  # fmt: skip


# --- EWC -------------------------------------------------------------------------------------------


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_with_distance(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "ewc", {"mode": "online", "ewc_lambda": 1.0}, FAST)
    ewc = create_strategy("ewc", {"mode": "online", "ewc_lambda": 1.0})
    ewc.load_state_dict(learner.strategy_states["ewc"])
    previous = copy.deepcopy(learner.model)
    ctx = make_ctx(learner, digits.train[0], previous)
    batch = ctx.labelled_batch(digits.train[0].x[:8], ctx.data.y[:8], ctx.data.task[:8])
    logits = learner.model(batch.x)
    assert float(ewc.penalty(ctx, batch, logits).detach()) == 0.0
    values = []
    for scale in (0.01, 0.1, 1.0):
        moved = copy.deepcopy(previous)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(scale)
        ctx.model = moved  # type: ignore[assignment]
        values.append(float(ewc.penalty(ctx, batch, logits).detach()))
    assert 0 < values[0] < values[1] < values[2]
    assert values[2] / values[1] == pytest.approx(100, rel=1e-3)  # quadratic in the distance


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_ewc_with_lambda_zero_equals_naive(mode: str, digits: SplitBenchmark) -> None:
    naive = two_tasks(Learner.create(digit_spec(), seed=1), digits, "naive")
    ewc = Learner.create(digit_spec(), seed=1)
    for exp in digits.train[:2]:
        ewc.learn(exp, "ewc", {"ewc_lambda": 0.0, "mode": mode}, FAST)
    for va, vb in zip(naive.model.state_dict().values(), ewc.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_ewc_fisher_is_nonnegative_and_online_keeps_one(digits: SplitBenchmark) -> None:
    learner = two_tasks(Learner.create(digit_spec(), seed=0), digits, "ewc")
    state = learner.strategy_states["ewc"]
    assert len(state["fishers"]) == 2 and len(state["anchors"]) == 2
    assert all(bool((f >= 0).all()) for fisher in state["fishers"] for f in fisher.values())
    online = Learner.create(digit_spec(), seed=0)
    for exp in digits.train[:3]:
        online.learn(exp, "ewc", {"mode": "online"}, FAST)
    assert len(online.strategy_states["ewc"]["fishers"]) == 1
    assert online.strategy_states["ewc"]["anchors"] == []
    assert {k for k in online.strategy_states["ewc"]["fishers"][0] if k.startswith("heads.")} == {
        f"heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }  # every head block, the newest included


def test_ewc_empirical_fisher_differs_from_true(digits: SplitBenchmark) -> None:
    fishers = []
    for kind in ("true", "empirical"):
        learner = Learner.create(digit_spec(), seed=0)
        learner.learn(digits.train[1], "ewc", {"fisher": kind}, FAST)
        fishers.append(learner.strategy_states["ewc"]["fishers"][0]["heads.0.weight"])
    assert not torch.equal(*fishers)


def test_ewc_refuses_to_switch_mode_on_existing_state(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "ewc", {"mode": "separate"}, FAST)
    with pytest.raises(ValueError, match="separate"):
        learner.learn(digits.train[1], "ewc", {"mode": "online"}, FAST)


# --- LwF -------------------------------------------------------------------------------------------


def test_lwf_penalty_is_zero_first_and_positive_after(digits: SplitBenchmark) -> None:
    seen: list[float] = []
    learner = Learner.create(digit_spec(), seed=0)

    def record(p: Progress) -> None:
        seen.append(p.losses["penalty"])

    learner.learn(digits.train[0], "lwf", None, FAST, progress=record)
    first = list(seen)
    seen.clear()
    learner.learn(digits.train[1], "lwf", None, FAST, progress=record)
    assert first and all(v == 0.0 for v in first)
    assert seen and all(v > 0.0 for v in seen)


# --- MAS -------------------------------------------------------------------------------------------


def test_mas_importances_are_nonnegative_and_informative(digits: SplitBenchmark) -> None:
    learner = two_tasks(Learner.create(digit_spec(), seed=0), digits, "mas")
    omega = learner.strategy_states["mas"]["importance"]
    assert all(bool((o >= 0).all()) for o in omega.values())
    assert sum(float(o.sum()) for o in omega.values()) > 0
    assert omega["heads.0.weight"].shape == omega["heads.1.weight"].shape == (2, 256)


# --- replay and its buffer -------------------------------------------------------------------------


def test_buffer_respects_per_class_budget_and_balance() -> None:
    buf = ClassBalancedBuffer(per_class=5)
    g = torch.Generator().manual_seed(0)
    buf.add(torch.rand(40, 3), torch.tensor([0] * 30 + [1] * 10), g)
    assert buf.counts() == {0: 5, 1: 5}
    buf.add(torch.rand(9, 3), torch.tensor([2] * 3 + [3] * 6), g)
    assert buf.counts() == {0: 5, 1: 5, 2: 3, 3: 5}


def test_buffer_total_budget_shrinks_each_class_and_keeps_the_first_chosen() -> None:
    buf = ClassBalancedBuffer(per_class=50, max_total=20)
    g = torch.Generator().manual_seed(0)
    x = torch.arange(60, dtype=torch.float32)[:, None]
    buf.add(x[:40], torch.tensor([0] * 20 + [1] * 20), g)
    assert buf.counts() == {0: 10, 1: 10}
    kept_0 = buf.x[buf.y == 0][:5].clone()  # type: ignore[index]
    buf.add(x[40:], torch.tensor([2] * 10 + [3] * 10), g)
    assert buf.counts() == {0: 5, 1: 5, 2: 5, 3: 5}
    assert torch.equal(buf.x[buf.y == 0], kept_0)  # type: ignore[index]


def test_herding_picks_the_sample_nearest_the_mean_first() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    assert herding_order(f, 3).tolist()[0] == 2
    assert sorted(herding_order(f, 3).tolist()) == [0, 1, 2]


def test_replay_buffer_holds_its_budget_after_learning(digits: SplitBenchmark) -> None:
    learner = two_tasks(Learner.create(digit_spec(), seed=0), digits, "replay")
    y = learner.strategy_states["replay"]["y"]
    offered = [int(n) for exp in digits.train[:2] for n in torch.bincount(exp.y)]  # each class's training samples
    assert torch.bincount(y).tolist() == [max(20, math.ceil(n / 3)) for n in offered]


# --- generative replay -----------------------------------------------------------------------------


def test_generative_replay_keeps_no_samples(digits: SplitBenchmark) -> None:
    learner = two_tasks(Learner.create(digit_spec(), seed=0), digits, "generative_replay")
    state = learner.strategy_states["generative_replay"]
    assert set(state) == {"known_units", "generator", "gaussians"} and state["generator"] == "class_gaussians"
    assert state["known_units"] == [0, 1, 2, 3]
    train = torch.cat([e.x for e in digits.train[:2]]).reshape(-1, 64)
    # no tensor row of the state is a training sample (a component mean averages >= 10 samples)
    for unit, model in state["gaussians"]["classes"].items():
        for name, tensor in model.items():
            rows = tensor.reshape(-1, 64) if tensor.numel() % 64 == 0 and name == "means" else None
            if rows is not None:
                assert float(torch.cdist(rows, train).min()) > 1e-3, f"class {unit} {name} holds a sample"
    gen = create_strategy("generative_replay")
    gen.load_state_dict(state)
    assert gen.gaussians is not None  # type: ignore[attr-defined]
    samples = gen.gaussians.sample(torch.tensor([0, 3]), torch.Generator().manual_seed(0))  # type: ignore[attr-defined]
    assert samples.shape == (2, 64)


def test_learning_a_new_class_leaves_old_class_generators_bitwise_unchanged(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "generative_replay", None, FAST)
    before = copy.deepcopy(learner.strategy_states["generative_replay"]["gaussians"]["classes"])
    for exp in digits.train[1:3]:
        learner.learn(exp, "generative_replay", None, FAST)
    after = learner.strategy_states["generative_replay"]["gaussians"]["classes"]
    assert sorted(after) == ["0", "1", "2", "3", "4", "5"]
    for unit in ("0", "1"):
        for name, tensor in before[unit].items():
            assert torch.equal(tensor, after[unit][name]), f"class {unit}: {name} changed"


def test_generative_replay_reports_replay_quality_per_old_class(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    first = learner.learn(digits.train[0], "generative_replay", None, FAST)
    assert "replay_accuracy" not in first.diagnostics  # nothing to replay yet
    assert 0.0 <= first.diagnostics["replay_artefact_probe"] <= 1.0
    second = learner.learn(digits.train[1], "generative_replay", None, FAST)
    quality = second.diagnostics["replay_accuracy"]
    assert set(quality) == {"0", "1"} and all(0.0 <= v <= 1.0 for v in quality.values())
    assert min(quality.values()) > 0.8  # the per-class models replay digits the parent recognises


def test_generative_replay_vae_is_still_selectable(digits: SplitBenchmark) -> None:
    from model_core.config import InputSpec, NetworkSpec

    spec = NetworkSpec(InputSpec("vector", dim=64), hidden=(32,))
    learner = Learner.create(spec, seed=0)
    params = {**SMALL["generative_replay"], "generator": "vae"}
    for exp in digits.train[:2]:
        flat = Experience(exp.task, exp.x.reshape(len(exp), -1) * 16 - 8, exp.y, exp.classes)  # not in [0, 1]
        learner.learn(flat, "generative_replay", params, FAST)
    state = learner.strategy_states["generative_replay"]
    assert state["generator"] == "vae" and "gaussians" not in state
    assert float(state["vae"]["weights"]["x_mean"].abs().sum()) > 0  # vectors: standardisation was fitted
    # a later job with the default parameters keeps the kind its classes live in
    learner.learn(digits_flat(digits.train[2]), "generative_replay", {"generator_iterations": 5, "hidden": 32}, FAST)
    assert learner.strategy_states["generative_replay"]["generator"] == "vae"


def digits_flat(exp: Experience) -> Experience:
    return Experience(exp.task, exp.x.reshape(len(exp), -1) * 16 - 8, exp.y, exp.classes)


# --- the trainer's hooks ---------------------------------------------------------------------------


def test_progress_reports_and_cancel_stops_training(digits: SplitBenchmark) -> None:
    from model_core.strategies.base import TrainingCancelled

    reports: list[Progress] = []
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "naive", None, FAST, progress=reports.append)
    assert [r.step for r in reports] == [10, 20, 30]
    with pytest.raises(TrainingCancelled):
        Learner.create(digit_spec(), seed=0).learn(digits.train[0], "naive", None, FAST, should_cancel=lambda: True)


def test_wrong_input_shape_is_refused(digits: SplitBenchmark) -> None:
    exp = digits.train[0]
    bad = Experience(exp.task, exp.x.reshape(len(exp), 64), exp.y, exp.classes)
    with pytest.raises(ValueError, match="shape"):
        Learner.create(digit_spec()).learn(bad, "naive", None, FAST)


def test_task_incremental_predicts_within_the_given_task(digits: SplitBenchmark) -> None:
    learner = two_tasks(Learner.create(digit_spec("task-incremental"), seed=0), digits, "naive")
    predicted = set(learner.predict(digits.test[0].x, task="task1"))
    assert predicted <= {"0", "1"}
    with pytest.raises(ValueError, match="needs the task"):
        learner.predict(digits.test[0].x)
    with pytest.raises(KeyError, match="unknown task"):
        learner.predict(digits.test[0].x, task="nope")


def test_class_incremental_more_data_for_a_known_class_adds_no_unit(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "naive", None, FAST)
    again = replace(digits.train[0], task="task1-more")
    result = learner.learn(again, "naive", None, FAST)
    assert result.new_labels == [] and learner.model.num_units == 2


@pytest.mark.gpu
def test_training_on_cuda_with_mixed_precision(digits: SplitBenchmark) -> None:
    seed_everything(0)
    learner = Learner.create(digit_spec(), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, "generative_replay", SMALL["generative_replay"], replace(FAST, device="cuda", amp=True))
    assert learner.accuracy(digits.test[1], device="cuda") > 0.6


@pytest.mark.parametrize("strategy", ["generative_replay", "ewc"])
def test_a_cancelled_learn_leaves_the_learner_as_it_was(strategy: str, digits: SplitBenchmark) -> None:
    from model_core.strategies.base import TrainingCancelled

    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], strategy, SMALL.get(strategy), FAST)
    x = digits.test[0].x
    before, state = learner.logits(x, device="cpu"), learner.strategy_states[strategy]
    with pytest.raises(TrainingCancelled):
        learner.learn(digits.train[1], strategy, SMALL.get(strategy), FAST, should_cancel=lambda: True)
    assert learner.labels == ["0", "1"] and learner.task_names == ["task1"]
    assert torch.equal(learner.logits(x, device="cpu"), before)
    assert learner.strategy_states[strategy] is state
    learner.learn(digits.train[1], strategy, SMALL.get(strategy), FAST)  # and it still learns
    assert learner.labels == ["0", "1", "2", "3"]


def test_the_api_process_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from service.http.app import create_app; from service.settings import Settings;"
        "import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp());"
        "create_app(Settings(data_dir=d, insecure=True)); assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --- frozen backbones: features once, and the analytic head ------------------------------------------


def test_a_frozen_backbone_stays_bitwise_unchanged_and_computes_each_feature_once(digits: SplitBenchmark) -> None:
    learner = frozen(Learner.create(digit_spec(), seed=0))
    backbone = copy.deepcopy(learner.model.backbone.state_dict())
    calls: list[int] = []
    forward = learner.model.forward_features

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return forward(x)

    learner.model.forward_features = counting  # type: ignore[method-assign]
    for exp in digits.train[:2]:
        learner.learn(exp, "generative_replay", None, FAST)
        learner.accuracy(digits.test[0])
        learner.accuracy(digits.test[0])  # the gate checks the same samples before and after
    seen = sum(len(e) for e in digits.train[:2]) + len(digits.test[0])
    assert sum(calls) == seen  # every distinct sample once, whatever the steps, replay and checks
    for key, value in learner.model.backbone.state_dict().items():
        assert torch.equal(value, backbone[key]), f"frozen backbone tensor {key} changed"
    assert not learner.model.backbone.training or not any(p.requires_grad for p in learner.model.backbone.parameters())


def test_analytic_head_learned_task_by_task_equals_the_joint_solution(digits: SplitBenchmark) -> None:
    from model_core.strategies.analytic import solve_ridge

    learner = frozen(Learner.create(digit_spec(), seed=0))
    # the ridge on the features as they are, every sample weighing the same (random features and class balance:
    # tests/unit/test_analytic.py)
    params = {"ridge": 1e-3, "features": "input", "balance": "samples"}
    for exp in digits.train:
        result = learner.learn(exp, "analytic", params, FAST)
        assert result.train.steps == 0  # closed form: no gradient steps
    # the same ridge on all the data at once
    x = torch.cat([e.x for e in digits.train])
    y = torch.cat([e.y + 2 * i for i, e in enumerate(digits.train)])
    f = torch.cat([learner.features(x).double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    targets = torch.nn.functional.one_hot(y, 10).double()
    joint, _ = solve_ridge(f.T @ f, f.T @ targets, len(x), 1e-3)
    head = torch.cat([torch.cat([h.weight, h.bias[:, None]], 1) for h in learner.model.heads]).double()
    assert torch.allclose(head, joint.T, atol=1e-4)
    assert min(learner.accuracy(t) for t in digits.test) > 0.5  # no task forgotten


def test_analytic_refuses_a_backbone_that_trains(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    with pytest.raises(ValueError, match="frozen pretrained backbone"):
        learner.learn(digits.train[0], "analytic", None, FAST)
    assert learner.labels == []  # all or nothing


def test_onnx_features_match_the_torch_backbone_and_feed_the_same_training(digits: SplitBenchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from model_core.export_frozen import OnnxFeatures

    learner = frozen(Learner.create(digit_spec(), seed=0))
    fast = OnnxFeatures(learner, tmp_path)
    assert len(list(tmp_path.glob("features-*.onnx"))) == 1  # exported once into the cache
    x = digits.test[0].x
    with torch.no_grad():
        want = learner.model.forward_features(x)
    assert torch.allclose(fast(x), want, atol=1e-4)
    learner.feature_fn = OnnxFeatures(learner, tmp_path)  # the second build reads the cached graph
    learner.learn(digits.train[0], "generative_replay", None, FAST)
    assert learner.accuracy(digits.test[0]) > 0.9


def test_buffer_budget_from_the_data_keeps_a_third_of_each_class_and_at_least_20() -> None:
    buf = ClassBalancedBuffer(per_class=None)
    g = torch.Generator().manual_seed(0)
    sizes = {0: 300, 1: 30, 2: 10}
    y = torch.cat([torch.full((n,), c) for c, n in sizes.items()])
    buf.add(torch.randn(len(y), 4), y, g)
    assert buf.counts() == {0: 100, 1: 20, 2: 10}
    buf.add(torch.randn(600, 4), torch.full((600,), 3), g)  # a later, larger class; the old ones keep theirs
    assert buf.counts() == {0: 100, 1: 20, 2: 10, 3: 200}


def test_the_replay_artefact_probe_sees_isotropic_pixel_noise(digits: SplitBenchmark) -> None:
    probes = {}
    for noise in ("isotropic", "residual"):
        learner = Learner.create(digit_spec(), seed=0)
        for exp in digits.train[:3]:  # after replay has been trained on: what the classifier learnt of it
            result = learner.learn(exp, "generative_replay", {"noise": noise}, TrainConfig(device="cpu"))
        probes[noise] = result.diagnostics["replay_artefact_probe"]
    # noise on the pixels that never vary (the border) gives replay away; the residual noise keeps it real
    assert probes["isotropic"] > 0.8 and probes["residual"] < probes["isotropic"] - 0.1, probes
