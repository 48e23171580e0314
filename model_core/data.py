"""Experiences (one labelled batch for one task) and the class-split benchmarks built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Experience:
    """One learning step: samples of some classes, under one task name.

    ``x`` is (N, *input_shape) float32 (images in [0, 1]); ``y`` is (N,) int64 indexing ``classes``.
    """

    task: str
    x: Tensor
    y: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")
        if self.x.shape[0] == 0:
            raise ValueError(f"experience {self.task!r} has no samples")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"experience {self.task!r} repeats a class name")
        if int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes):
            raise ValueError(f"experience {self.task!r} has labels outside its {len(self.classes)} classes")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labels(self) -> list[str]:
        """The label name of every sample."""
        return [self.classes[i] for i in self.y.tolist()]


@dataclass(frozen=True)
class SplitBenchmark:
    """A class-split stream: train and test experiences, one pair per task, in order."""

    name: str
    train: list[Experience]
    test: list[Experience]


def split_by_classes(
    x: Tensor, y: Tensor, groups: Sequence[Sequence[int]], class_names: Sequence[str], prefix: str = "task"
) -> list[Experience]:
    """Cut a labelled set into one experience per group of class ids, in the order given."""
    out = []
    for i, group in enumerate(groups):
        keep = torch.isin(y, torch.tensor(list(group)))
        local = {c: j for j, c in enumerate(group)}
        y_local = torch.tensor([local[int(c)] for c in y[keep].tolist()], dtype=torch.long)
        out.append(Experience(f"{prefix}{i + 1}", x[keep], y_local, tuple(class_names[c] for c in group)))
    return out


def _pairs(n_classes: int, n_tasks: int) -> list[list[int]]:
    per = n_classes // n_tasks
    return [list(range(t * per, (t + 1) * per)) for t in range(n_tasks)]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits: images (N, 8, 8) in [0, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel values are 0..16
    return images, digits.target.astype(np.int64)


def split_digits(seed: int = 0, test_size: float = 0.3, n_tasks: int = 5) -> SplitBenchmark:
    """Split-Digits: ``load_digits`` with a fixed stratified train/test split, 5 tasks of 2 classes.

    The split depends on ``seed`` only through ``random_state=seed``; the benchmark uses seed 0 for the
    split and varies the training seed, so every run sees the same test set.
    """
    from sklearn.model_selection import train_test_split

    images, labels = load_digits_arrays()
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, stratify=labels, random_state=seed)
    names = [str(c) for c in range(10)]
    groups = _pairs(10, n_tasks)

    def to_t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).unsqueeze(1)  # (N, 1, 8, 8)

    return SplitBenchmark(
        "split-digits",
        split_by_classes(to_t(x_tr), torch.from_numpy(y_tr), groups, names),
        split_by_classes(to_t(x_te), torch.from_numpy(y_te), groups, names),
    )


def split_mnist(root: str | Path, download: bool = False, n_tasks: int = 5) -> SplitBenchmark:
    """Split-MNIST through torchvision's loader; downloads only when ``download`` is true."""
    from torchvision.datasets import MNIST

    names = [str(c) for c in range(10)]
    groups = _pairs(10, n_tasks)
    parts = []
    for train in (True, False):
        ds = MNIST(str(root), train=train, download=download)
        x = ds.data.float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
        parts.append(split_by_classes(x, ds.targets.long(), groups, names))
    return SplitBenchmark("split-mnist", parts[0], parts[1])


MNIST_5K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-5k"  # ../shared beside the project


def mnist_5k_arrays(root: str | Path = MNIST_5K) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real 28x28 MNIST digits of ``../shared/data/mnist-5k`` (idx format, gzip): images (N, 28, 28)
    uint8 and labels (N,). FileNotFoundError naming the folder when it is absent."""
    import gzip

    root = Path(root)
    files = [root / "images-idx3-ubyte.gz", root / "labels-idx1-ubyte.gz"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"mnist-5k is not at {root.resolve()} (missing {', '.join(missing)})")
    with gzip.open(files[0]) as f:
        raw = f.read()
        n, rows, cols = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    with gzip.open(files[1]) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def stratified_split(labels: np.ndarray, test_share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): a seeded ``test_share`` of each class held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(len(idx) * test_share)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
