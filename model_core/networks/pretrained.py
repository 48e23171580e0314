"""Registry backbones (``timm/<model>``, ``torchvision/<model>``) with pretrained weights, inside the graph.

A ``RegistryBackbone`` takes the classifier's declared images ((B, C, H, W) in [0, 1] after the classifier's
own identity normalisation), repeats a grey channel to RGB, resizes to the working resolution and
normalises with the weights' mean and std, all in the graph, so the exported ONNX model takes the same
[0, 1] pixels as every other Engram model. Frozen parts keep ``requires_grad=False`` and stay in eval mode
(batch norm too) whatever ``train()`` is called with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.config import BackboneSpec, NetworkSpec, WeightsAccess
from model_core.files import sha256_file
from model_core.networks.weights import (
    BackboneError,
    WeightsError,
    download_file,
    fit_state_dict,
    is_safetensors,
    package_weights_file,
    read_state_dict,
    server_file,
)
from model_core.packaged_weights import PACKAGED

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _timm_model(model: str) -> tuple[nn.Module, dict[str, Any], tuple[str, ...], str | None]:
    """(network without classifier, pretrained cfg, classifier state-dict keys, last stage module name)."""
    import timm

    if not timm.is_model(model):
        raise BackboneError(f"timm has no model {model!r} (see timm.list_models())")
    net = timm.create_model(model, pretrained=False)
    full = list(net.state_dict())
    net.reset_classifier(0)  # type: ignore[operator]  # features out; the weights files' classifier tensors are then known extras
    kept = net.state_dict()
    head = tuple(k for k in full if k not in kept)
    cfg: dict[str, Any] = dict(getattr(net, "pretrained_cfg", None) or {})
    info = getattr(net, "feature_info", None)
    last = info[-1]["module"] if info else None
    return net, cfg, head, last


def _torchvision_model(model: str) -> tuple[nn.Module, dict[str, Any], tuple[str, ...], str | None]:
    import torchvision

    if model not in torchvision.models.list_models(torchvision.models):
        raise BackboneError(f"torchvision has no classification model {model!r} (see torchvision.models.list_models())")
    net = torchvision.models.get_model(model, weights=None)
    head: tuple[str, ...] = ()
    for attr in ("fc", "classifier", "head", "heads"):
        if isinstance(getattr(net, attr, None), nn.Module):
            head = tuple(f"{attr}.{k}" for k in getattr(net, attr).state_dict())
            setattr(net, attr, nn.Identity())
            break
    cfg: dict[str, Any] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 224, 224)}
    try:
        weights = torchvision.models.get_model_weights(model).DEFAULT
    except (ValueError, AttributeError):  # a model without published weights
        weights = None
    if weights is not None:
        t = weights.transforms()
        size = int(t.crop_size[0])
        cfg = {"mean": tuple(t.mean), "std": tuple(t.std), "input_size": (3, size, size), "url": weights.url}
    return net, cfg, head, None


def _last_stage_names(net: nn.Module, last: str | None) -> set[str]:
    """Parameter names of the last stage and everything after it (e.g. efficientnet's conv_head, bn2)."""
    names = [n for n, _ in net.named_parameters()]
    if last is None:  # the last top-level child with parameters, descending into a "features" Sequential
        module, prefix = net, ""
        while True:
            children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
            if not children:
                break
            name, child = children[-1]
            prefix, module = prefix + name + ".", child
            if name != "features":
                break
        last = prefix.rstrip(".")
    start = next((i for i, n in enumerate(names) if n.startswith(last + ".")), 0)
    return set(names[start:])


class RegistryBackbone(nn.Module):
    """A timm or torchvision network as an Engram backbone: (B, C, H, W) in [0, 1] -> (B, feature_dim)."""

    mean: Tensor
    std: Tensor

    def __init__(self, spec: NetworkSpec, access: WeightsAccess | None = None, load_weights: bool = True) -> None:
        super().__init__()
        bb, inp = spec.backbone, spec.input
        registry, _, model = bb.name.partition("/")
        net, cfg, head_keys, last = (_timm_model if registry == "timm" else _torchvision_model)(model)
        if bb.weights == "package" and bb.name in PACKAGED:  # what the packaged weights expect
            cfg.update(mean=PACKAGED[bb.name].mean, std=PACKAGED[bb.name].std)
        self.net = net
        self.pretrained_cfg = cfg
        mean = bb.mean or tuple(cfg.get("mean") or IMAGENET_MEAN)
        std = bb.std or tuple(cfg.get("std") or IMAGENET_STD)
        self.mean_std = (tuple(float(v) for v in mean), tuple(float(v) for v in std))  # as recorded in the spec
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.in_channels = inp.channels
        assert bb.resolution is not None  # set by BackboneSpec for registry names
        short = min(inp.height, inp.width)  # the shorter side goes to ``resolution``, keeping the aspect
        self.size = (round(inp.height * bb.resolution / short), round(inp.width * bb.resolution / short))
        self.weights_path: Path | None = None
        if load_weights and bb.pretrained:
            self.weights_path = weights_path(bb, cfg, access or WeightsAccess(cache_dir=bb.cache_dir))
            if bb.sha256 and sha256_file(self.weights_path) != bb.sha256:
                raise WeightsError(
                    f"weights file {str(self.weights_path)!r} changed since the classifier was created (sha256 differs)"
                )
            found = read_state_dict(self.weights_path)
            ordered = not is_safetensors(self.weights_path)
            self.net.load_state_dict(fit_state_dict(self.net.state_dict(), found, head_keys, ordered))
        trainable: set[str] | None = None  # None: every parameter ("all")
        if bb.train == "frozen":
            trainable = set()
        elif bb.train == "last":
            trainable = _last_stage_names(self.net, last)
        for name, p in self.net.named_parameters():
            p.requires_grad_(trainable is None or name in trainable)
        self.feature_dim = self._measure_feature_dim()
        self.train(False)

    def _measure_feature_dim(self) -> int:
        dim = getattr(self.net, "num_features", None)
        if isinstance(dim, int) and dim > 0 and hasattr(self.net, "pretrained_cfg"):
            return dim
        was = self.training
        self.eval()
        with torch.no_grad():
            out = self.net(torch.zeros(1, 3, *self.size))
        self.train(was)
        return int(out.reshape(1, -1).shape[1])

    def frozen_modules(self) -> Iterator[nn.Module]:
        """The largest submodules whose parameters are all frozen (they stay in eval mode)."""
        seen: list[str] = []
        for name, module in self.net.named_modules():
            params = list(module.parameters())
            if not params or any(p.requires_grad for p in params):
                continue
            if any(s == "" or name.startswith(s + ".") for s in seen):  # "" is the whole network
                continue
            seen.append(name)
            yield module

    def train(self, mode: bool = True) -> RegistryBackbone:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels == 1:  # grey images on an RGB network: the same plane on every channel
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.size:  # (B, 3, H, W) -> (B, 3, *size); antialiased when shrinking
            shrink = self.size[0] < x.shape[-2] or self.size[1] < x.shape[-1]
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=shrink)
        out: Tensor = self.net((x - self.mean) / self.std)
        return out.flatten(1)  # (B, feature_dim)


def weights_path(bb: BackboneSpec, pretrained_cfg: Mapping[str, Any], access: WeightsAccess) -> Path:
    """The local file holding the weights ``bb`` asks for (downloading it only when allowed)."""
    if bb.weights == "package":
        return package_weights_file(bb.name)
    if bb.weights == "file":
        return server_file(bb, access)
    if bb.weights == "download":
        return download_file(bb, pretrained_cfg, access)
    raise WeightsError(f"backbone {bb.name!r} has no weights source")


def resolve_network_spec(spec: NetworkSpec, access: WeightsAccess | None = None) -> NetworkSpec:
    """Check that ``spec``'s backbone builds, its weights load and it runs; record sha256 and preprocessing.

    Raises ``BackboneError`` (a ``ValueError``; ``WeightsError`` for weights) saying what is wrong. Call it
    when a classifier is created, so a bad weights file is refused then rather than at the first job.
    """
    bb = spec.backbone
    if bb.builtin:
        return spec
    access = access or WeightsAccess(cache_dir=bb.cache_dir)
    backbone = RegistryBackbone(spec, access)
    try:
        with torch.no_grad():
            out = backbone(torch.rand(1, *spec.input.shape))
    except Exception as exc:
        raise BackboneError(f"backbone {bb.name!r} cannot take {spec.input.shape} images at {bb.resolution} px: {exc}") from None
    if out.shape != (1, backbone.feature_dim):
        raise BackboneError(f"backbone {bb.name!r} gives features of shape {tuple(out.shape)}, not (1, D)")
    cfg = backbone.pretrained_cfg
    recorded = dataclasses.replace(
        bb,
        cache_dir=bb.cache_dir or (access.cache_dir if bb.weights == "download" else None),
        file=str(backbone.weights_path.resolve()) if bb.weights == "file" and backbone.weights_path else bb.file,
        sha256=sha256_file(backbone.weights_path) if backbone.weights_path else None,
        mean=backbone.mean_std[0],
        std=backbone.mean_std[1],
        input_size=tuple(int(v) for v in cfg.get("input_size") or (3, 224, 224)),
    )
    return dataclasses.replace(spec, backbone=recorded)
