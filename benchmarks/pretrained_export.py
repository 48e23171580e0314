"""The pretrained default's whole graph in ONNX: export parity and ONNX Runtime predict speed per resolution.

    python -m benchmarks.pretrained_export [--backbone timm/efficientnet_lite0] [--resolutions 224,160,128]
                                           [--image 3x32x32] [--threads 0] [--seconds 5]

For each working resolution: a classifier on the declared image size with the backbone (package weights,
frozen) and a 10-class head, exported with ``model_core.export.export_onnx`` (the graph resizes,
normalises, runs the backbone and the head), the largest |torch - ONNX Runtime| logit difference on 32
cifar-like random images (the gate refuses above 1e-4), then ONNX Runtime rows/s at batch 1 and 32 on
the CPU (``--threads`` per session, 0 = ONNX Runtime's default: one per core), per wall-clock second and
per CPU second of the process. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from model_core.config import BackboneSpec, InputSpec, NetworkSpec
from model_core.export import export_onnx
from model_core.learner import Learner, TaskInfo


def rows_per_second(session: object, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """(rows per wall-clock second, rows per CPU second of this process): on a shared machine the second
    is the steadier figure (with one thread, it is what one idle core would do)."""
    run = session.run  # type: ignore[attr-defined]
    run(["logits"], {"input": x})  # warm up
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        run(["logits"], {"input": x})
        n += len(x)
    return n / elapsed, n / max(time.process_time() - cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description="pretrained ONNX export parity and speed (see module docstring)")
    parser.add_argument("--backbone", default="timm/efficientnet_lite0")
    parser.add_argument("--resolutions", default="224,160,128")
    parser.add_argument("--image", default="3x32x32", help="the classifier's declared C x H x W")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed run per batch size")
    args = parser.parse_args()
    import onnxruntime as ort

    c, h, w = (int(v) for v in args.image.split("x"))
    check = torch.rand(32, c, h, w, generator=torch.Generator().manual_seed(1))
    print(f"{args.backbone} on {args.image}, ORT threads {args.threads or 'default'}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for res in (int(r) for r in args.resolutions.split(",")):
        spec = NetworkSpec(InputSpec("image", c, h, w), backbone=BackboneSpec(args.backbone, resolution=res))
        learner = Learner.create(spec)
        learner.model.expand_head(10, torch.Generator().manual_seed(0))
        learner.labels, learner.tasks = [str(i) for i in range(10)], [TaskInfo("t", list(range(10)))]
        start = time.perf_counter()
        result = export_onnx(learner, check)
        export_s = time.perf_counter() - start
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(result.onnx, opts, providers=["CPUExecutionProvider"])
        speed = {b: rows_per_second(session, check[:b].numpy(), args.seconds) for b in (1, 32)}
        print(f"{res:>4} px  parity {result.max_abs_diff:.1e}  export {export_s:5.1f} s  {len(result.onnx) / 2**20:5.1f} MiB"
              f"  batch 1: {speed[1][0]:6.1f} rows/s ({speed[1][1]:6.1f} per CPU s)"
              f"  batch 32: {speed[32][0]:6.1f} rows/s ({speed[32][1]:6.1f} per CPU s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
