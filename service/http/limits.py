"""Limits applied while a request body is read, before anything parses it.

Every body is capped at ``ENGRAM_MAX_BODY_BYTES`` as it streams in (Litestar's limit). A predict body to a
classifier this replica already serves is also capped by what its largest valid request can need, known from the
classifier's input format without the database: ``max_predict_items`` vectors of its dimension as JSON
(``JSON_BYTES_PER_VALUE`` a number, generous for any float's shortest repr plus indentation), or as an ``.npy``
file of float64 rows. So a 60 MB predict body to a 4-value vector classifier is refused after about 200 kB
are read, instead of being parsed into 300 MB of Python objects first. Image bodies (base64 JSON, multipart
files) keep the global cap: their decoding is bounded by pixels (``service.inference.decoding``).

A multipart form may have as many parts as the largest valid request (``form_part_limit``): Litestar's own
default of 1,000 parts would refuse a valid predict of 1,024 files.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.inference.binary import NPY_TYPES
from service.inference.sessions import ServingState
from service.settings import Settings

BOUND_KEY = "engram_body_bound"  # connection state: (bytes, why) for this request's body
JSON_BYTES_PER_VALUE = 48  # "-1.2345678901234567e-308" is 24 characters; the rest is separators and indentation
JSON_BYTES_PER_ITEM = 64  # '{"vector": [...]}, ' and indentation
OVERHEAD_BYTES = 16_384  # top_k, task, version, whitespace; an .npy header is at most 10,000


def form_part_limit(settings: Settings) -> int:
    """Parts the largest valid form has: every predict file, or every learn file and its label, plus the fields."""
    return max(settings.max_predict_items, 2 * settings.max_batch_items) + 16


def set_predict_bound(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard step: record the body cap of a predict to a classifier served here (nothing when not served yet)."""
    if handler.opt.get("body_bound") != "predict":
        return
    serving: ServingState = connection.app.state.serving
    served = serving.active(str(connection.path_params.get("name", "")))
    if served is None:
        return
    settings: Settings = connection.app.state.settings
    items, inp = settings.max_predict_items, served.fmt.input
    ctype = connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if inp.kind == "text":  # bounded by max_body_bytes and MAX_CHARS a message
        return
    values = inp.dim if inp.kind == "vector" else inp.channels * inp.height * inp.width
    if ctype in NPY_TYPES:
        bound, what = items * values * 8 + OVERHEAD_BYTES, f".npy array of up to {items} float64 rows of {values} values"
    elif ctype == "application/json" and inp.kind == "vector":
        bound = items * (values * JSON_BYTES_PER_VALUE + JSON_BYTES_PER_ITEM) + OVERHEAD_BYTES
        what = f"JSON predict of up to {items} vectors of {values} values"
    else:
        return
    if bound < settings.max_body_bytes:
        connection.state[BOUND_KEY] = (bound, what)


def body_bound(state: Any) -> tuple[int, str] | None:
    found = state.get(BOUND_KEY) if state is not None else None
    return found if isinstance(found, tuple) else None
