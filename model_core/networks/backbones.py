"""Feature extractors. Each maps (B, *input_shape) to (B, feature_dim)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from model_core.config import NetworkSpec, WeightsAccess
from model_core.networks.pretrained import RegistryBackbone
from model_core.networks.text_encoder import TextEncoder


class MLP(nn.Module):
    """Flatten, standardise per value (``in_mean``, ``in_scale``: a no-op until fitted, see
    ``model_core.networks.standardize``), then Linear+ReLU per hidden width."""

    in_mean: Tensor
    in_scale: Tensor

    def __init__(self, in_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.register_buffer("in_mean", torch.zeros(in_features))  # (D,)
        self.register_buffer("in_scale", torch.ones(in_features))  # (D,)
        self._register_load_state_dict_pre_hook(functools.partial(_no_op_standardization, in_features))  # type: ignore[no-untyped-call]

    def forward(self, x: Tensor) -> Tensor:
        x = (x.flatten(1) - self.in_mean.to(x.dtype)) / self.in_scale.to(x.dtype)
        out: Tensor = self.body(x)
        return out


def _no_op_standardization(dim: int, state: dict[str, Tensor], prefix: str, *_: object) -> None:
    """MLPs saved before the input standardisation read their input as it is."""
    state.setdefault(f"{prefix}in_mean", torch.zeros(dim))
    state.setdefault(f"{prefix}in_scale", torch.ones(dim))


class Identity(nn.Module):
    """The inputs are the features (backbone ``identity``): flattened as given, nothing to train. Sentence
    embeddings or a pretrained model's outputs then get the frozen-feature heads (``analytic``, ``class_models``
    on features, novelty) and the per-job feature cache."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.feature_dim = in_features

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class SmallCNN(nn.Module):
    """Three 3x3 conv stages for small images (8x8 to 32x32), no batch norm.

    Batch norm is left out on purpose: its running statistics drift to the newest task and silently
    change old tasks' outputs, which is exactly what a continual learner must avoid.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], feature_dim: int = 256) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, H/2, W/2)
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),  # (B, c3, 2, 2) whatever the input size
            nn.Flatten(),
            nn.Linear(c3 * 4, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with random weights (nothing is downloaded), fc removed.

    For inputs up to 64 px the stem is a 3x3 stride-1 conv without max-pool (the usual CIFAR variant), so
    small images keep enough spatial resolution through the four stages.
    """

    def __init__(self, in_channels: int, height: int, width: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if max(height, width) <= 64:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.body = net
        self.feature_dim = 512

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


def create_backbone(
    spec: NetworkSpec, access: WeightsAccess | None = None, load_weights: bool = True
) -> MLP | Identity | SmallCNN | ResNet18 | RegistryBackbone | TextEncoder:
    """Build the backbone a spec names; its ``feature_dim`` attribute gives the output width.

    Registry backbones load their pretrained weights unless ``load_weights`` is False (a saved bundle
    supplies every weight itself); ``access`` says where downloads are cached and whether they may happen.
    """
    inp, name = spec.input, spec.backbone.name
    if spec.backbone.text:
        return TextEncoder(spec, load_weights)
    if not spec.backbone.builtin:
        return RegistryBackbone(spec, access, load_weights)
    if name == "mlp":
        return MLP(inp.numel, spec.hidden)
    if name == "identity":
        return Identity(inp.numel)
    if name == "cnn":
        return SmallCNN(inp.channels, spec.cnn_channels)
    return ResNet18(inp.channels, inp.height, inp.width)


class Normalize(nn.Module):
    """(x - mean) / std inside the graph, so serving feeds raw [0, 1] pixels or raw vectors."""

    mean: Tensor
    std: Tensor

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        pre, inp = spec.preprocessing, spec.input
        shape = (1, -1, 1, 1) if inp.kind == "image" else (1, -1)
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
