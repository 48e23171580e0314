"""ONNX export parity per backbone: the largest |torch - ONNX Runtime| logit difference after one digits task.

    python -m benchmarks.export_parity [--iterations 300]

Learns Split-Digits' first task (0 vs 1) with each backbone on CPU, exports with
``model_core.export.export_onnx`` and checks on that task's test images, the same check the worker's gate
applies (refused above 1e-4).
"""

from __future__ import annotations

import argparse

import torch

from model_core.config import InputSpec, NetworkSpec, TrainConfig
from model_core.data import split_digits
from model_core.export import export_onnx
from model_core.learner import Learner


def main() -> None:
    parser = argparse.ArgumentParser(description="ONNX export parity per backbone (see module docstring)")
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = split_digits()
    first, test = digits.train[0], digits.test[0]
    config = TrainConfig(iterations=args.iterations, batch_size=64, device="cpu")
    for backbone in ("mlp", "cnn", "resnet18"):
        learner = Learner.create(NetworkSpec(InputSpec("image", 1, 8, 8), backbone=backbone))  # type: ignore[arg-type]
        learner.learn(first, "naive", config=config)
        result = export_onnx(learner, check_inputs=test.x)
        print(f"{backbone:<9} max |torch - onnxruntime| over {len(test.x)} test images: {result.max_abs_diff:.1e}")


if __name__ == "__main__":
    main()
