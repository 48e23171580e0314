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


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One gzip-compressed idx file (MNIST's format): big-endian magic, dimension sizes, then uint8 data."""
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    found, ndim = int.from_bytes(data[:4], "big"), data[3]
    if found != magic:
        raise ValueError(f"{path} is not an idx file with magic {magic} (found {found})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist_5k_arrays(root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real 28x28 MNIST digits (``../shared/data/mnist-5k`` beside the project unless ``root`` says):
    images (N, 28, 28) uint8 and labels (N,). FileNotFoundError naming the folder when the files are absent."""
    folder = Path(root) if root is not None else MNIST_5K
    images_path, labels_path = folder / "images-idx3-ubyte.gz", folder / "labels-idx1-ubyte.gz"
    if not (images_path.is_file() and labels_path.is_file()):
        raise FileNotFoundError(
            f"mnist-5k not found at {folder}: it needs images-idx3-ubyte.gz and labels-idx1-ubyte.gz "
            "(the shared data folder ../shared/data/mnist-5k beside the project)"
        )
    return _read_idx(images_path, 2051), _read_idx(labels_path, 2049).astype(np.int64)


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


def mnist_5k(root: str | Path | None = None, seed: int = 0, test_size: float = 0.3, n_tasks: int = 5) -> SplitBenchmark:
    """mnist-5k (``mnist_5k_arrays``) with a seeded per-class split (``test_size`` of every class held out,
    ``stratified_split``), ``n_tasks`` tasks of 10 / n_tasks classes."""
    images, labels = mnist_5k_arrays(root)
    train, test = stratified_split(labels, test_size, seed)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    names = [str(c) for c in range(10)]
    groups = _pairs(10, n_tasks)
    return SplitBenchmark(
        "mnist-5k",
        split_by_classes(x[train], y[train], groups, names),
        split_by_classes(x[test], y[test], groups, names),
    )
