from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model_core.checkpoint import MANIFEST, STATE, WEIGHTS, load_bundle, read_manifest, save_bundle
from model_core.data import SplitBenchmark
from model_core.learner import Learner
from tests.conftest import FAST, digit_spec
from tests.unit.support import SMALL


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
def test_round_trip_reproduces_predictions_bit_for_bit(scenario: str, digits: SplitBenchmark, tmp_path: Path) -> None:
    learner = Learner.create(digit_spec(scenario, "cnn"), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, "ewc", None, FAST)
    learner.learn(digits.train[2], "generative_replay", SMALL["generative_replay"], FAST)
    save_bundle(tmp_path / "v3", learner, {"name": "generative_replay", "params": {}}, parent="v2")
    loaded, manifest = load_bundle(tmp_path / "v3")
    x = torch.cat([t.x for t in digits.test[:3]])
    assert torch.equal(loaded.logits(x, device="cpu"), learner.logits(x, device="cpu"))
    assert loaded.labels == learner.labels and loaded.task_names == ["task1", "task2", "task3"]
    assert manifest.parent == "v2" and manifest.strategy["name"] == "generative_replay"
    assert set(loaded.strategy_states) == {"ewc", "generative_replay"}  # both learners' states travel
    # and the loaded learner continues learning from that state
    loaded.learn(digits.train[3], "ewc", None, FAST)
    assert len(loaded.strategy_states["ewc"]["fishers"]) == 3


def test_bundle_files_load_without_pickle(digits: SplitBenchmark, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "replay", None, FAST)
    save_bundle(tmp_path / "b", learner, extra_files={"model.onnx": b"xyz"})
    assert set(p.name for p in (tmp_path / "b").iterdir()) == {MANIFEST, WEIGHTS, STATE, "model.onnx"}
    torch.load(tmp_path / "b" / STATE, weights_only=True)
    assert "heads.0.weight" in load_file(str(tmp_path / "b" / WEIGHTS))
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["labels"] == ["0", "1"] and manifest["network"]["input"]["height"] == 8
    assert manifest["tasks"] == [{"name": "task1", "units": [0, 1]}]


def test_bundles_are_immutable_and_leave_no_partial_folder(digits: SplitBenchmark, tmp_path: Path) -> None:
    learner = Learner.create(digit_spec(), seed=0)
    learner.learn(digits.train[0], "naive", None, FAST)
    save_bundle(tmp_path / "v1", learner)
    with pytest.raises(FileExistsError):
        save_bundle(tmp_path / "v1", learner)
    with pytest.raises(ValueError, match="bad extra file"):
        save_bundle(tmp_path / "v2", learner, extra_files={"../evil": b""})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_foreign_folder_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an engram-bundle"):
        read_manifest(tmp_path)
