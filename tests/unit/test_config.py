from __future__ import annotations

import json

import pytest

from model_core.config import InputSpec, NetworkSpec, Preprocessing, TrainConfig, default_backbone


def test_network_spec_round_trips_through_json() -> None:
    spec = NetworkSpec(InputSpec("image", 3, 32, 32), backbone="cnn", scenario="task-incremental",
                       preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))  # fmt: skip
    assert NetworkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "image", "channels": 2, "height": 8, "width": 8}, "1 \\(grey\\) or 3"),
        ({"kind": "image", "channels": 1, "height": 0, "width": 8}, "height"),
        ({"kind": "vector", "dim": 0}, "dim"),
        ({"kind": "audio"}, "unknown input kind"),
    ],
)
def test_input_spec_rejects_bad_shapes(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputSpec(**kwargs)  # type: ignore[arg-type]


def test_conv_backbones_need_images() -> None:
    with pytest.raises(ValueError, match="needs image input"):
        NetworkSpec(InputSpec("vector", dim=4), backbone="cnn")


def test_default_backbone_by_input() -> None:
    assert default_backbone(InputSpec("vector", dim=10)) == "mlp"
    assert default_backbone(InputSpec("image", 1, 28, 28)) == "mlp"
    assert default_backbone(InputSpec("image", 1, 8, 8)) == "mlp"
    # photos, and grey images too large to train from scratch on a few hundred samples: pretrained, frozen
    assert default_backbone(InputSpec("image", 3, 32, 32)) == "timm/efficientnet_lite0"
    assert default_backbone(InputSpec("image", 3, 224, 224)) == "timm/efficientnet_lite0"
    assert default_backbone(InputSpec("image", 1, 64, 64)) == "timm/efficientnet_lite0"


def test_train_config_validates() -> None:
    with pytest.raises(ValueError):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError):
        TrainConfig(lr=0)
