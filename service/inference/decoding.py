"""Decoding a predict request's inputs, bounded in CPU and memory and kept off other clients' path.

Two bounds, because either alone leaves a gap:

- A per-request pixel budget (``max_request_pixels``): every image's size is read from its header before any
  is decoded, and a request whose images add up to more is refused (413) at the cost of reading headers.
  The per-image limit (``max_image_pixels``) bounds one decode's memory; this bounds one request's CPU.
- A bounded pool for heavy requests (``decode_threads``): a request over ``decode_light_pixels`` decodes in
  one of at most that many threads, waiting for a free one without holding any thread. Light requests (a
  few small images, vectors, ``.npy`` rows) decode at once in a thread of their own, so a tiny predict
  never queues behind a heavy one, and heavy ones together never take more than ``decode_threads`` cores.

Decoding happens before a request joins its version's micro-batch (``service.inference.batching``): the
batch's thread only runs the model, so one request's images never delay another request's model run.
Pillow releases the GIL while it decodes and resizes, so decode threads and the event loop run side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from service.inference.binary import ImageFiles, NpyBatch
from service.inference.inputs import (
    INPUT_FIELDS,
    InputError,
    InputFormat,
    b64_bytes,
    check_fields,
    image_pixels,
    one_kind,
    parse_items,
)
from service.settings import Settings


class TooMuchToDecode(ValueError):
    """A request whose images add up to more pixels than one request may decode (the HTTP edge answers 413)."""


@dataclass(frozen=True)
class DecodeLimits:
    max_image_pixels: int  # one image, from its header (image bombs)
    max_request_pixels: int  # all of one request's images together
    light_pixels: int  # requests up to this many pixels decode at once, outside the bounded pool
    threads: int  # heavy requests decoding at once

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        threads = settings.decode_threads or max(1, len(os.sched_getaffinity(0)) // 2)
        return cls(settings.max_image_pixels, settings.max_request_pixels, settings.decode_light_pixels, threads)


Prepared = np.ndarray | Callable[[], np.ndarray]


class Decoder:
    """``await decoder.prepare(inputs, fmt)`` -> (N, *shape) float32 model input rows."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self._heavy: anyio.CapacityLimiter | None = None  # made on first use, inside the event loop

    async def prepare(self, items: Sequence[Any] | ImageFiles | NpyBatch, fmt: InputFormat) -> np.ndarray:
        plan = await anyio.to_thread.run_sync(self.plan, items, fmt)
        if isinstance(plan, np.ndarray):
            return plan
        if self._heavy is None:
            self._heavy = anyio.CapacityLimiter(self.limits.threads)
        return await anyio.to_thread.run_sync(plan, limiter=self._heavy)

    def plan(self, items: Sequence[Any] | ImageFiles | NpyBatch, fmt: InputFormat) -> Prepared:
        """In a thread: read what decoding will cost (image headers only); decode now if light, else return the
        decoding to run in the bounded pool. Raises InputError, TooMuchToDecode or the binary body errors."""
        lim = self.limits
        if isinstance(items, NpyBatch):
            return items.rows(fmt, lim.max_image_pixels)
        if fmt.input.kind != "image":
            if isinstance(items, ImageFiles):
                return items.rows(fmt, lim.max_image_pixels)  # refuses files for a vector classifier
            return parse_items(items, fmt, "inputs", lim.max_image_pixels)
        field, blobs = ("file", list(items.files)) if isinstance(items, ImageFiles) else ("inputs", _b64(items, fmt))
        total = 0
        for i, data in enumerate(blobs):
            try:
                total += image_pixels(data, lim.max_image_pixels)
            except ValueError as exc:
                raise InputError(field, i, str(exc)) from None
        if total > lim.max_request_pixels:
            raise TooMuchToDecode(f"the request's {len(blobs)} images add up to {total:,} pixels; one request may "
                                  f"decode at most {lim.max_request_pixels:,}: send fewer or smaller images")  # fmt: skip
        files = ImageFiles(blobs)

        def decode() -> np.ndarray:
            try:
                return files.rows(fmt, lim.max_image_pixels)
            except InputError as exc:
                raise InputError(field, exc.index, exc.reason) from None

        return decode() if total <= lim.light_pixels else decode


def _b64(items: Sequence[Any], fmt: InputFormat) -> list[bytes]:
    """Each JSON input's image bytes; InputError naming the first that has none."""
    out = []
    for i, item in enumerate(items):
        try:
            check_fields(item, INPUT_FIELDS)
            if "text" in item:
                one_kind(item, fmt)
            out.append(b64_bytes(item))
        except ValueError as exc:
            raise InputError("inputs", i, str(exc)) from None
    return out
