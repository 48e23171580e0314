"""Linear probe of a pretrained backbone on an ImageFolder (e.g. cifar10-mini), through Engram's own graph.

    python -m benchmarks.linear_probe [--data-root ../shared/data/cifar10-mini] [--per-class 30 30]
        [--resolution 128] [--variants package,random,shuffled,imagenet-norm] [--backbone timm/efficientnet_lite0]

Frozen features (``forward_features``: resize to the resolution in the graph, the weights' normalisation,
the backbone) of ``per-class`` photos a class from ``train/`` and ``test/``, then scikit-learn's logistic
regression on all classes. Variants: ``package`` (the weights as Engram loads them), ``random`` (random
init), ``shuffled`` (the same tensors in a wrong order: permuted among tensors of equal shape),
``imagenet-norm`` (the weights with timm's ImageNet mean/std instead of theirs). tests/unit/test_pretrained.py
holds the floor these numbers set. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from model_core.config import BackboneSpec, InputSpec, NetworkSpec
from model_core.networks import IncrementalClassifier, create_network
from model_core.networks.pretrained import RegistryBackbone
from model_core.probe import linear_probe, photo_folder

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def shuffle_equal_shapes(net: torch.nn.Module, seed: int = 0) -> None:
    sd = net.state_dict()
    groups: dict[tuple[object, ...], list[str]] = {}
    for key, t in sd.items():
        if t.ndim:
            groups.setdefault((tuple(t.shape), key.rsplit(".", 1)[-1]), []).append(key)
    g, new = torch.Generator().manual_seed(seed), dict(sd)
    for keys in groups.values():
        for key, j in zip(keys, torch.randperm(len(keys), generator=g).tolist(), strict=True):
            new[key] = sd[keys[j]]
    net.load_state_dict(new)


def network(backbone: str, resolution: int, variant: str) -> IncrementalClassifier:
    bb = BackboneSpec(backbone, weights="none" if variant == "random" else None, resolution=resolution)
    net = create_network(NetworkSpec(InputSpec("image", 3, 32, 32), bb)).eval()
    inner = net.backbone
    assert isinstance(inner, RegistryBackbone), "a probe needs a registry backbone (timm/... or torchvision/...)"
    if variant == "shuffled":
        shuffle_equal_shapes(inner.net)
    if variant == "imagenet-norm":
        inner.mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        inner.std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description="linear probe of a pretrained backbone (see module docstring)")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/cifar10-mini"))
    parser.add_argument("--per-class", type=int, nargs=2, default=(30, 30), metavar=("TRAIN", "TEST"))
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--variants", default="package,random,shuffled,imagenet-norm")
    parser.add_argument("--backbone", default="timm/efficientnet_lite0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = (photo_folder(args.data_root / s, n) for s, n in zip(("train", "test"), args.per_class, strict=True))
    for variant in args.variants.split(","):
        net = network(args.backbone, args.resolution, variant)
        start = time.perf_counter()
        acc = linear_probe(net, train, test)
        seconds = time.perf_counter() - start
        print(f"{variant:<14} {args.resolution} px, {args.per_class[0]}/{args.per_class[1]} photos a class: "
              f"accuracy {acc:.3f}  (features and fit {seconds:.1f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
