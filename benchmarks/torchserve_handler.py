"""The TorchServe peer's handler for ``benchmarks.serve_bench``: the Engram version's weights as a
TorchScript module (traced from the bundle by serve_bench), run on TorchServe's
server-side batches. It takes serve_bench's body, ``{"inputs": [{"image_b64": ...}]}``, decodes like
Engram and the naive server (Pillow: convert, bilinear resize, / 255), and answers each request with its
own predictions. Packed into the .mar by ``torch-model-archiver``; runs inside TorchServe's Python worker.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

_state: dict[str, Any] = {}


def _load(context: Any) -> None:
    model_dir = context.system_properties["model_dir"]
    torch.set_num_threads(int(context.system_properties.get("number_of_threads", 0) or torch.get_num_threads()))
    _state["model"] = torch.jit.load(f"{model_dir}/model.pt").eval()
    with open(f"{model_dir}/meta.json") as f:
        _state["meta"] = json.load(f)


def _decode(b64: str, inp: dict[str, int]) -> np.ndarray:
    img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("L" if inp["channels"] == 1 else "RGB")
    if img.size != (inp["width"], inp["height"]):
        img = img.resize((inp["width"], inp["height"]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if inp["channels"] == 1 else arr.transpose(2, 0, 1)


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    """TorchServe's entry point: ``data`` is the batch TorchServe formed, one dict per request."""
    if "model" not in _state:
        _load(context)
    if data is None:
        return None
    meta = _state["meta"]
    rows, counts = [], []
    for req in data:
        body = req.get("body") or req.get("data")
        if isinstance(body, bytes | bytearray):
            body = json.loads(body)
        items = body["inputs"]
        counts.append(len(items))
        rows.extend(_decode(i["image_b64"], meta["input"]) for i in items)
    with torch.inference_mode():
        probs = torch.softmax(_state["model"](torch.from_numpy(np.stack(rows))), dim=1)
    score, idx = probs.max(dim=1)
    preds = [{"label": meta["labels"][int(i)], "score": float(s)} for s, i in zip(score, idx, strict=True)]
    out, start = [], 0
    for n in counts:
        out.append({"predictions": preds[start : start + n]})
        start += n
    return out
