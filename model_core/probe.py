"""A linear probe of a network's features: how well a logistic regression on them separates a photo folder's
classes. It tells good pretrained weights from wrong ones (random, shuffled, mis-normalised); used by the
pretrained-weights test and ``benchmarks.linear_probe``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_core.networks import IncrementalClassifier

Split = tuple[torch.Tensor, np.ndarray]


def photo_folder(root: Path, per_class: int, side: int = 32) -> Split:
    """(N, 3, side, side) in [0, 1] and (N,) class indices: the first ``per_class`` files of each class folder."""
    xs, ys = [], []
    for c, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(folder.iterdir())[:per_class]:
            xs.append(np.asarray(Image.open(f).convert("RGB").resize((side, side)), dtype=np.float32) / 255.0)
            ys.append(c)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), np.array(ys)


def features(net: IncrementalClassifier, x: torch.Tensor, batch: int = 100) -> np.ndarray:
    """The network's features of ``x``, in evaluation mode, without gradients."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net.forward_features(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def linear_probe(net: IncrementalClassifier, train: Split, test: Split) -> float:
    """Accuracy on ``test`` of a logistic regression fitted on ``train``'s features."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(max_iter=3000).fit(features(net, train[0]), train[1])
    return float(fitted.score(features(net, test[0]), test[1]))
