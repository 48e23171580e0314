"""What a pause between runs costs the default photo backbone in process: its run time back to back and after a
1 ms and a 5 ms pause (one client's requests arrive with a pause between them; the in-process limit of
``benchmarks.serve_bench`` runs back to back), under Engram's serving session options, ONNX Runtime's defaults,
spinning without the stop, and one thread.

    python -m benchmarks.ort_gap [--runs 150]

EfficientNet-Lite0 (the packaged ImageNet weights) on 64x64 RGB inputs, batch 1, the graph exported alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from model_core.config import BackboneSpec, InputSpec, NetworkSpec
from model_core.export_frozen import backbone_graph
from model_core.learner import Learner
from service.inference.sessions import ServingOptions, session_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=150, help="timed runs per option set and pause")
    args = parser.parse_args()
    spec = NetworkSpec(InputSpec("image", 3, 64, 64), backbone=BackboneSpec("timm/efficientnet_lite0"))
    graph = backbone_graph(Learner.create(spec), "input", None)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    spin = ort.SessionOptions()
    spin.add_session_config_entry("session.intra_op.allow_spinning", "1")
    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    options = {"engram": session_options(ServingOptions(0, 64, 0.0, 10**6)), "ort defaults": ort.SessionOptions(),
               "spin, no stop": spin, "1 thread": one}  # fmt: skip
    for name, so in options.items():
        session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        for _ in range(20):
            session.run(None, {"input": x})
        for pause in (0.0, 0.001, 0.005):
            times = []
            for _ in range(args.runs):
                if pause:
                    time.sleep(pause)
                t = time.perf_counter()
                session.run(None, {"input": x})
                times.append(time.perf_counter() - t)
            print(f"{name:14s} pause {pause * 1000:.0f} ms: run p50 {np.median(times) * 1000:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
