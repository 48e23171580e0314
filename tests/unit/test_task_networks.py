"""packnet and progressive: old tasks bitwise unchanged, the structure round-trips, ONNX parity, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_core.checkpoint import load_bundle, save_bundle
from model_core.config import TrainConfig
from model_core.data import SplitBenchmark
from model_core.export import PARITY_TOLERANCE, export_onnx
from model_core.learner import Learner
from model_core.networks.task_networks import PackNetOwners, ProgressiveColumns
from model_core.strategy_specs import SPECS, task_network_refusal
from service.application.learning import LearningService, _check_task_is_new
from service.domain.commands import Learn
from service.domain.errors import Invalid
from tests.conftest import digit_spec

TINY = TrainConfig(iterations=10, batch_size=32, device="cpu")
PACKNET = {"retrain_steps": 5}


def snapshot(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


def test_packnet_keeps_every_weight_task_0_uses_bitwise_and_its_predictions(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("task-incremental"), seed=3)
    learner.learn(digits.train[0], "packnet", PACKNET, TINY)
    before, logits = snapshot(learner), learner.logits(digits.test[0].x)[:, :2]
    owners = learner.model.task_network
    assert isinstance(owners, PackNetOwners)
    used = {owners.weight_name(i): owners.owner(i).clone() == 1 for i in owners.layers}
    assert all(0.4 < float(u.float().mean()) <= 0.5 for u in used.values())  # prune 0.5 freed half of each layer
    learner.learn(digits.train[1], "packnet", PACKNET, TINY)
    after = learner.model.state_dict()
    for name, mask in used.items():
        w0, w1 = before[f"backbone.{name}"], after[f"backbone.{name}"]
        assert torch.equal(w0[mask], w1[mask]), name
        assert not torch.equal(w0[~mask], w1[~mask]), f"{name}: the freed weights trained for task 1"
    for key in ("heads.0.weight", "heads.0.bias", "backbone.body.1.bias", "backbone.body.3.bias"):
        assert torch.equal(before[key], after[key]), key
    assert torch.equal(learner.logits(digits.test[0].x)[:, :2], logits)
    assert learner.accuracy(digits.test[1]) > 0.7


def test_progressive_keeps_old_columns_bitwise(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("task-incremental"), seed=3)
    for exp in digits.train[:2]:
        learner.learn(exp, "progressive", None, TINY)
    before, logits = snapshot(learner), learner.logits(digits.test[0].x)
    learner.learn(digits.train[2], "progressive", None, TINY)
    after = learner.model.state_dict()
    columns = learner.model.task_network
    assert isinstance(columns, ProgressiveColumns) and len(columns.columns) == 2
    old = [k for k in before if k != "task_network.n_columns"]  # columns 0-1, lateral 0, heads 0-1
    assert len(old) > 8 and all(torch.equal(before[k], after[k]) for k in old)
    assert not torch.equal(after["task_network.columns.0.body.1.weight"], before["backbone.body.1.weight"])
    assert torch.equal(learner.logits(digits.test[0].x)[:, :4], logits)
    assert learner.accuracy(digits.test[2]) > 0.7


@pytest.mark.parametrize(("strategy", "params"), [("packnet", PACKNET), ("progressive", None)])
def test_task_networks_round_trip_continue_and_export(strategy: str, params: dict | None, digits: SplitBenchmark,
                                                      tmp_path: Path) -> None:  # fmt: skip
    learner = Learner.create(digit_spec("task-incremental"), seed=3)
    for exp in digits.train[:2]:
        learner.learn(exp, strategy, params, TINY)
    save_bundle(tmp_path / "v2", learner, {"name": strategy})
    loaded, _ = load_bundle(tmp_path / "v2")
    assert type(loaded.model.task_network) is type(learner.model.task_network)
    saved = learner.model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.model.state_dict().items())
    x = digits.test[1].x[:64]
    assert torch.equal(loaded.logits(x), learner.logits(x))
    loaded.learn(digits.train[2], strategy, params, TINY)  # the next job continues from the bundle
    assert torch.equal(loaded.logits(x)[:, :4], learner.logits(x))
    result = export_onnx(loaded, digits.test[2].x[:16])  # every task's network, concatenated in unit order
    assert result.max_abs_diff <= PARITY_TOLERANCE


def test_task_strategies_are_refused_on_class_incremental_classifiers(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("class-incremental"), seed=3)
    for strategy in ("packnet", "progressive"):
        with pytest.raises(ValueError, match="task-incremental classifiers only") as err:
            learner.learn(digits.train[0], strategy, None, TINY)
        assert "replay" in str(err.value) and "generative_replay" in str(err.value)
    assert learner.labels == [] and learner.model.task_network is None
    # the service refuses the learn request up front with the same words (Invalid: a 422), and mixing strategies
    # on a partitioned classifier
    network = digit_spec("class-incremental").to_dict()
    with pytest.raises(Invalid, match="task-incremental classifiers only") as refused:
        LearningService._strategy(Learn(task="t", strategy="progressive", samples=[]), network, None)
    assert "generative_replay" in str(refused.value) and "class_models" in str(refused.value)
    task_il = digit_spec("task-incremental").to_dict()
    assert task_network_refusal("packnet", None, task_il) is None
    assert "Learn with packnet" in str(task_network_refusal("ewc", "packnet", task_il))
    assert "first one" in str(task_network_refusal("progressive", "naive", task_il))
    assert all(SPECS[n].needs_tasks for n in ("packnet", "progressive"))
    learned = [{"name": "t", "labels": ["0", "1"]}]
    with pytest.raises(Invalid, match="task 't' is already learned"):
        _check_task_is_new("packnet", "t", learned)
    _check_task_is_new("packnet", "u", learned)
    _check_task_is_new("ewc", "t", learned)


def test_another_strategy_cannot_train_a_partitioned_network(digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("task-incremental"), seed=3)
    learner.learn(digits.train[0], "progressive", None, TINY)
    with pytest.raises(ValueError, match="Learn with progressive"):
        learner.learn(digits.train[1], "naive", None, TINY)
    with pytest.raises(ValueError, match="learns each task once"):
        learner.learn(digits.train[0], "progressive", None, TINY)
    assert learner.task_names == [digits.train[0].task]


@pytest.mark.parametrize("strategy", ["packnet", "progressive"])
def test_on_a_frozen_backbone_only_the_new_head_trains(strategy: str, digits: SplitBenchmark) -> None:
    learner = Learner.create(digit_spec("task-incremental"), seed=3)
    learner.model.backbone.requires_grad_(False)  # as a pretrained one is: nothing shared trains
    learner.learn(digits.train[0], strategy, PACKNET if strategy == "packnet" else None, TINY)
    before = snapshot(learner)
    learner.learn(digits.train[1], strategy, PACKNET if strategy == "packnet" else None, TINY)
    after = learner.model.state_dict()
    assert learner.model.task_network is None and all(torch.equal(v, after[k]) for k, v in before.items())
    assert learner.accuracy(digits.test[1]) > 0.7
