"""Frozen configuration objects stored with every model.

Everything here is plain data: it round-trips through JSON (``to_dict`` / ``from_dict``) so that a
checkpoint bundle carries its own constructor arguments and serving metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Scenario = Literal["class-incremental", "task-incremental"]
SCENARIOS: tuple[Scenario, ...] = ("class-incremental", "task-incremental")
BackboneName = Literal["mlp", "cnn", "resnet18"]


@dataclass(frozen=True)
class InputSpec:
    """What one model input looks like, before the batch axis.

    Images are float32 in [0, 1], laid out (C, H, W); vectors are float32 (D,).
    """

    kind: Literal["image", "vector"]
    channels: int = 1  # images only
    height: int = 0  # images only, pixels
    width: int = 0  # images only, pixels
    dim: int = 0  # vectors only

    def __post_init__(self) -> None:
        if self.kind == "image":
            if min(self.channels, self.height, self.width) < 1:
                raise ValueError("an image input needs channels, height and width >= 1")
            if self.channels not in (1, 3):
                raise ValueError("an image input has 1 (grey) or 3 (RGB) channels")
        elif self.kind == "vector":
            if self.dim < 1:
                raise ValueError("a vector input needs dim >= 1")
        else:
            raise ValueError(f"unknown input kind {self.kind!r}; expected 'image' or 'vector'")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        if self.kind == "image":
            return (self.channels, self.height, self.width)
        return (self.dim,)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become the network's input; identical at learn and predict time.

    The network normalises internally with ``mean``/``std`` (one value per channel for images, one per
    feature or a single value for vectors), so the exported ONNX graph takes [0, 1] pixels directly.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: Literal["bilinear", "nearest"] = "bilinear"  # how images of another size are resampled
    # How uploaded pixel values map to [0, 1]; 255 for 8-bit images. Vectors are used as given.
    pixel_scale: float = 255.0


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the network before loading its weights."""

    input: InputSpec
    backbone: BackboneName = "mlp"
    scenario: Scenario = "class-incremental"
    # MLP hidden widths; the last is the feature size. 2x256 matches the Avalanche peer setup.
    hidden: tuple[int, ...] = (256, 256)
    # CNN channel widths of its three conv stages; a 256-wide linear layer follows them.
    cnn_channels: tuple[int, ...] = (32, 64, 128)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; expected one of {SCENARIOS}")
        if self.backbone not in ("mlp", "cnn", "resnet18"):
            raise ValueError(f"unknown backbone {self.backbone!r}; expected mlp, cnn or resnet18")
        if self.backbone != "mlp" and self.input.kind != "image":
            raise ValueError(f"backbone {self.backbone!r} needs image input; use 'mlp' for vectors")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        data = dict(data)
        data["input"] = InputSpec(**data["input"])
        pre = dict(data.get("preprocessing") or {})
        for key in ("mean", "std"):
            if key in pre:
                pre[key] = tuple(pre[key])
        data["preprocessing"] = Preprocessing(**pre)
        for key in ("hidden", "cnn_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def default_backbone(spec: InputSpec) -> BackboneName:
    """The backbone a new classifier gets when none is asked for."""
    if spec.kind == "vector":
        return "mlp"
    if max(spec.height, spec.width) <= 32:
        return "cnn"
    return "resnet18"


@dataclass(frozen=True)
class TrainConfig:
    """How one experience is trained. Defaults follow the Avalanche peer setup on Split-Digits."""

    epochs: int = 25  # passes over the experience's data (ignored when ``iterations`` is set)
    iterations: int | None = None  # fixed optimiser steps per experience (van de Ven protocol: 2000)
    batch_size: int = 64  # new-data samples per step; replay adds its own samples on top
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0
    seed: int = 0  # seeds weights of new units, shuffling, replay sampling and generators
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    amp: bool = True  # bf16 autocast on cuda; ignored on cpu
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.epochs < 1 and self.iterations is None:
            raise ValueError("epochs must be >= 1")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
