"""The BentoML peer for ``benchmarks.serve_bench``: BentoML 1.4 with adaptive batching, serving the Engram
version's own ONNX file with ONNX Runtime's default session options (what a BentoML user would write).

    ENGRAM_BENCH_BUNDLE=BUNDLE_DIR bentoml serve benchmarks.bento_service:OnnxClassifier --port 8200

It takes serve_bench's request body, ``{"inputs": [{"image_b64": ...}]}``, and decodes it with Engram's
own code (``service.inference.inputs``), so the comparison is of the serving machinery, not the decoder.
BentoML concatenates concurrent requests' ``inputs`` into one batch (up to 64 rows, as Engram).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel

BUNDLE = Path(os.environ.get("ENGRAM_BENCH_BUNDLE", "."))


class Item(BaseModel):
    image_b64: str


@bentoml.service(workers=1, traffic={"timeout": 120})
class OnnxClassifier:
    def __init__(self) -> None:
        import onnxruntime as ort

        from service.inference.inputs import InputFormat

        network = json.loads((BUNDLE / "manifest.json").read_text())["network"]
        self.fmt = InputFormat.from_network(network)
        self.session = ort.InferenceSession(str(BUNDLE / "model.onnx"), providers=["CPUExecutionProvider"])
        self.labels = json.loads(self.session.get_modelmeta().custom_metadata_map["engram.labels"])

    # max_latency_ms is BentoML's bound on a request's queueing before it answers 503; its adaptive
    # dispatcher chooses the actual wait from the observed run times.
    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def predict(self, inputs: list[Item]) -> list[dict[str, Any]]:
        from service.inference.inputs import parse_items, softmax

        x = parse_items([{"image_b64": i.image_b64} for i in inputs], self.fmt, "inputs", 10**8)
        probs = softmax(self.session.run(["logits"], {"input": x})[0])
        best = probs.argmax(axis=1)
        return [{"label": self.labels[int(b)], "score": float(p[b])} for p, b in zip(probs, best, strict=True)]
