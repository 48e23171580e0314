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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from model_core.config import InputSpec, NetworkSpec, Preprocessing


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

    @classmethod
    def from_network(cls, network: dict[str, Any]) -> InputFormat:
        spec = NetworkSpec.from_dict(network)
        return cls(spec.input, spec.preprocessing)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.input.shape


def decode_image(data: bytes, fmt: InputFormat, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> (C, H, W) float32 in [0, 1]. Raises ValueError with a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ValueError(f"image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            img.load()
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image is too large to decode safely ({exc})") from None
    except Exception as exc:  # Pillow raises many types for corrupt or truncated data
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    inp = fmt.input
    img = img.convert("L" if inp.channels == 1 else "RGB")
    if img.size != (inp.width, inp.height):
        method = Image.Resampling.BILINEAR if fmt.preprocessing.resize == "bilinear" else Image.Resampling.NEAREST
        img = img.resize((inp.width, inp.height), method)
    arr = np.asarray(img, dtype=np.float32) / fmt.preprocessing.pixel_scale
    return arr[None] if inp.channels == 1 else arr.transpose(2, 0, 1)


def parse_item(item: Any, fmt: InputFormat, max_pixels: int) -> np.ndarray:
    """One {"image_b64": ...} or {"vector": [...]} -> model input array. Raises ValueError."""
    if not isinstance(item, dict):
        raise ValueError("must be an object with 'image_b64' or 'vector'")
    if fmt.input.kind == "image":
        raw = item.get("image_b64")
        if raw is None:
            raise ValueError("this classifier takes images: give 'image_b64'")
        if not isinstance(raw, str):
            raise ValueError("'image_b64' must be a base64 string")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("'image_b64' is not valid base64") from None
        return decode_image(data, fmt, max_pixels)
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
    """Every item or nothing: (N, *shape) float32, or InputError naming the first bad item."""
    out = np.empty((len(items), *fmt.shape), dtype=np.float32)
    for i, item in enumerate(items):
        try:
            out[i] = parse_item(item, fmt, max_pixels)
        except ValueError as exc:
            raise InputError(field, i, str(exc)) from None
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
