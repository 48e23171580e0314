"""Predict inputs sent without base64: an ``.npy`` array of the declared shape, or raw image files.

numpy and Pillow only (the predict path never imports torch). The HTTP layer reads the body and builds
one of the two batch types below; each knows how many rows it holds (so the batcher can size batches
before decoding) and turns itself into model input rows, (N, *input shape) float32, in the batch's
worker thread, where the classifier's input format is known:

- ``NpyBatch``: ``application/x-npy`` (or ``application/octet-stream`` carrying the same bytes). The
  header is parsed when the request arrives (an undecodable body gets 400 at once); the data is a view
  on the body, never copied until it is converted. ``float32`` / ``float64`` rows are used as given (the
  same [0, 1] values the JSON path's decoder produces); ``uint8`` image rows are raw pixels, scaled by
  the classifier's ``pixel_scale`` exactly as a decoded PNG is, so both paths give the same numbers.
- ``ImageFiles``: ``multipart/form-data`` with one ``file`` part per image (PNG, JPEG...), decoded by
  the same code as ``image_b64`` minus the base64 step.
"""

from __future__ import annotations

import io
import math
import reprlib
import warnings
from collections.abc import Sequence
from typing import overload

import numpy as np
import numpy.lib.format as npformat

from service.inference.inputs import InputError, InputFormat, decode_image

NPY_TYPES = ("application/x-npy", "application/octet-stream")
_FLOATS = ("float32", "float64")
_MAX_DIM = 2**31 - 1  # a dimension numpy can index; an empty array declaring a larger one is refused
_MAX_HEADER = 10_000  # bytes: numpy's own default limit; a huge header would be parsed on the event loop


class BodyError(ValueError):
    """A binary predict body that cannot be used as a whole (the HTTP edge answers 400 or 422 by its kind)."""


class Undecodable(BodyError):
    """The body is not what its content type says (not an ``.npy`` file, a malformed header, short data)."""


class Unfit(BodyError):
    """The body decodes but does not fit the classifier: shape, dtype, values, row count."""


def parse_npy(body: bytes) -> np.ndarray:
    """The array in an ``.npy`` file's bytes, as a read-only view on them (no pickles, no copy). The header is read
    by numpy's own ``numpy.lib.format`` (versions 1, 2 and 3, at most ``_MAX_HEADER`` bytes of it)."""
    stream = io.BytesIO(body)
    try:
        major, minor = npformat.read_magic(stream)
    except ValueError:
        raise Undecodable("the body is not an .npy file (it must start with the \\x93NUMPY magic); write it with "
                          "numpy.save") from None  # fmt: skip
    read_header = {1: npformat.read_array_header_1_0, 2: npformat.read_array_header_2_0}.get(min(major, 2))
    if read_header is None or major > 3:
        raise Undecodable(f".npy format version {major}.{minor} is not supported (1, 2 or 3)")
    declared = int.from_bytes(body[8 : 10 if major == 1 else 12], "little")  # the header's length field
    if declared > _MAX_HEADER:  # refused before numpy reads it: a huge header would be parsed on the event loop
        raise Undecodable(f"the .npy header is {declared} bytes; at most {_MAX_HEADER} are read")
    try:
        with warnings.catch_warnings():  # numpy warns while it retries a header with Python 2 literals
            warnings.simplefilter("ignore")
            shape, fortran, dtype = read_header(stream, max_header_size=_MAX_HEADER)
    except Exception:  # ValueError, or the tokenizer's and parser's own errors on a header that is not a dict
        raise Undecodable("the .npy header is malformed (it needs 'descr', 'fortran_order' and 'shape')") from None
    if not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
        raise Undecodable("the .npy header's shape must be a tuple of whole numbers")
    if any(d < 0 for d in shape):
        raise Undecodable(f"the .npy header has a negative dimension: {reprlib.repr(shape)}")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise Unfit(f"the array's dtype {dtype} is not numeric; send float32, float64 or uint8")
    offset = stream.tell()
    # Python integers: a product of dimensions beyond int64 (2**62 x 4) must compare, not overflow
    expected = math.prod(shape) * dtype.itemsize
    if any(d > _MAX_DIM for d in shape):
        raise Undecodable(f"the .npy header has a dimension over {_MAX_DIM}: {reprlib.repr(shape)}")
    if len(body) - offset != expected:
        raise Undecodable(f"the .npy data is {len(body) - offset} bytes; its header {shape} {dtype} needs {expected} bytes")
    flat = np.frombuffer(body, dtype=dtype, offset=offset, count=expected // dtype.itemsize)
    return flat.reshape(shape, order="F" if fortran else "C")


class NpyBatch(Sequence[np.ndarray]):
    """An ``.npy`` predict body: (N, *input shape) rows; ``len`` is N."""

    def __init__(self, body: bytes) -> None:
        self.array = parse_npy(body)
        if self.array.ndim < 2:
            raise Unfit(f"the array has shape {self.array.shape}; send (N, *input shape), one row per input")

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[np.ndarray]: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        return self.array[i]

    def rows(self, fmt: InputFormat, max_pixels: int) -> np.ndarray:
        """(N, *shape) float32, or BodyError saying what does not fit."""
        a, want = self.array, fmt.shape
        if fmt.input.kind == "text":
            raise Unfit("this classifier takes text: send JSON inputs {\"text\": ...}")
        if a.shape[1:] != want:
            kind = f"{fmt.input.channels}x{fmt.input.height}x{fmt.input.width} images" if fmt.input.kind == "image" \
                else f"vectors of {fmt.input.dim}"  # fmt: skip
            raise Unfit(f"the array has shape {a.shape}; this classifier takes {kind}: send (N, {', '.join(map(str, want))})",
            )
        name = a.dtype.name
        if name == "uint8" and fmt.input.kind == "image":
            return a.astype(np.float32) / np.float32(fmt.preprocessing.pixel_scale)  # as decode_image scales pixels
        if name not in _FLOATS:
            allowed = "float32, float64 or uint8 (raw pixels)" if fmt.input.kind == "image" else "float32 or float64"
            raise Unfit(f"the array's dtype is {a.dtype}; send {allowed}")
        bad = ~np.isfinite(a).reshape(len(a), -1).all(axis=1)
        if name == "float64" and not bad.any():
            bad = (np.abs(a) > np.finfo(np.float32).max).reshape(len(a), -1).any(axis=1)
        if bad.any():
            raise InputError("inputs", int(np.argmax(bad)), "has a non-finite value or one too large for float32")
        return np.ascontiguousarray(a, dtype=np.float32)


class ImageFiles(Sequence[bytes]):
    """A multipart predict body: one encoded image per ``file`` part, in order."""

    def __init__(self, files: list[bytes]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        return self.files[i]

    def rows(self, fmt: InputFormat, max_pixels: int) -> np.ndarray:
        """(N, *shape) float32; InputError names the first file that does not decode."""
        if fmt.input.kind == "text":
            raise Unfit("this classifier takes text: send JSON inputs {\"text\": ...}")
        if fmt.input.kind != "image":
            raise Unfit(f"this classifier takes vectors of {fmt.input.dim}; send them as JSON or .npy")
        out = np.empty((len(self.files), *fmt.shape), dtype=np.float32)
        for i, data in enumerate(self.files):
            try:
                out[i] = decode_image(data, fmt, max_pixels)
            except ValueError as exc:
                raise InputError("file", i, str(exc)) from None
        return out


BinaryBatch = NpyBatch | ImageFiles
