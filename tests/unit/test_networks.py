from __future__ import annotations

import pytest
import torch

from model_core.config import InputSpec, NetworkSpec
from model_core.networks import create_network
from tests.conftest import digit_spec


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
@pytest.mark.parametrize("backbone", ["mlp", "cnn"])
def test_head_growth_reproduces_old_logits_exactly(scenario: str, backbone: str) -> None:
    torch.manual_seed(0)
    net = create_network(digit_spec(scenario, backbone)).eval()
    net.expand_head(2)
    x = torch.rand(5, 1, 8, 8)
    before = net(x)
    net.expand_head(3, torch.Generator().manual_seed(1))
    after = net(x)
    assert after.shape == (5, 5)
    assert torch.equal(after[:, :2], before)  # bit for bit
    assert net.head_sizes == [2, 3]


def test_empty_network_has_no_outputs() -> None:
    net = create_network(digit_spec())
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, 0)


@pytest.mark.parametrize(
    ("spec", "feature_dim"),
    [
        (NetworkSpec(InputSpec("vector", dim=7), hidden=(16, 12)), 12),
        (NetworkSpec(InputSpec("image", 3, 20, 20), backbone="cnn"), 256),
        (NetworkSpec(InputSpec("image", 3, 32, 32), backbone="resnet18"), 512),
        (NetworkSpec(InputSpec("image", 1, 96, 96), backbone="resnet18"), 512),
    ],
)
def test_backbones_take_their_input(spec: NetworkSpec, feature_dim: int) -> None:
    net = create_network(spec, head_sizes=[4]).eval()
    x = torch.rand(2, *spec.input.shape)
    assert net.forward_features(x).shape == (2, feature_dim)
    assert net(x).shape == (2, 4)


def test_normalisation_is_inside_the_network() -> None:
    from model_core.config import Preprocessing

    spec = NetworkSpec(InputSpec("vector", dim=3), preprocessing=Preprocessing(mean=(1.0,), std=(2.0,)))
    net = create_network(spec)
    assert torch.equal(net.normalize(torch.tensor([[1.0, 3.0, 5.0]])), torch.tensor([[0.0, 1.0, 2.0]]))
