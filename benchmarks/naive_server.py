"""The baseline a user might write instead of Engram: a Litestar endpoint that runs the same model in
torch eager mode, one request at a time, with the same JSON body and the same image decoding.

    python -m benchmarks.naive_server BUNDLE_DIR --port 8100
"""

from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from litestar import Litestar, post
from PIL import Image

from model_core.checkpoint import load_bundle


def create_app(bundle: Path) -> Litestar:
    learner, manifest = load_bundle(bundle)
    model = learner.model.eval()
    inp = manifest.network["input"]
    mode = "L" if inp["channels"] == 1 else "RGB"
    labels = list(manifest.labels)

    @post("/predict", sync_to_thread=True, status_code=200)
    def predict(data: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for item in data["inputs"]:
            img = Image.open(io.BytesIO(base64.b64decode(item["image_b64"]))).convert(mode)
            if img.size != (inp["width"], inp["height"]):
                img = img.resize((inp["width"], inp["height"]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            rows.append(arr[None] if mode == "L" else arr.transpose(2, 0, 1))
        with torch.inference_mode():
            probs = torch.softmax(model(torch.from_numpy(np.stack(rows))), dim=1)
        score, idx = probs.max(dim=1)
        return {"predictions": [{"label": labels[int(i)], "score": float(s)} for s, i in zip(score, idx, strict=True)]}

    return Litestar([predict])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_app(args.bundle), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
