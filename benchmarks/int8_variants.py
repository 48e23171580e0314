"""Which static-quantization settings pay on this processor: feature error and in-process speed of each variant.

    python -m benchmarks.int8_variants                          # every variant, 32 calibration photos
    python -m benchmarks.int8_variants qdq_u8s8_pc qop_u8s8_pc  # some of them

Exports the default photo backbone (EfficientNet-Lite0, 224 px in the graph, 32x32 inputs) once, runs ONNX
Runtime's ``quant_pre_process`` once, then quantizes it with ``quantize_static`` under each variant, calibrated on
32 cifar10-mini training photos (min-max), and prints for each: the quantization time, the features' mean
relative error against fp32 (mean |int8 - fp32| / mean |fp32|) and their mean cosine on 32 other photos, and the
rows/s of both graphs at batch 32 with 2 intra-op threads (the best of 4 alternating runs each, so that a loaded
machine's drift hits both alike). Variants: QDQ or QOperator format, u8 or s8 activations, ``reduce_range``,
only some operator types, some nodes left in float, biases left in float.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def variants(prepared: Path) -> dict[str, dict[str, Any]]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType

    base = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True)  # fmt: skip
    nodes = onnx.load(str(prepared)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    front = [n.name for n in nodes if n.op_type in ("Resize", "Sub", "Div")]
    return {
        "qdq_u8s8_pc": base,  # the default (model_core.quantize.QuantConfig)
        "qop_u8s8_pc": dict(base, quant_format=QuantFormat.QOperator),
        "qdq_s8s8_pc": dict(base, activation_type=QuantType.QInt8),
        "qdq_u8s8_pc_rr": dict(base, reduce_range=True),
        "conv_only": dict(base, op_types_to_quantize=["Conv"]),
        "conv_noends": dict(base, op_types_to_quantize=["Conv"], nodes_to_exclude=[convs[0], convs[-1]]),
        "all_noresize": dict(base, nodes_to_exclude=front),
        "noadd": dict(base, nodes_to_exclude=[n.name for n in nodes if n.op_type == "Add"]),
        "nohead_all": dict(base, nodes_to_exclude=[convs[-1], *(n.name for n in nodes if n.op_type == "ReduceMean")]),
        "nobias": dict(base, extra_options={"CalibTensorRangeSymmetric": False, "QuantizeBias": False}),
    }


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model_core.config import BackboneSpec, InputSpec, NetworkSpec
    from model_core.export_frozen import backbone_graph
    from model_core.learner import Learner
    from model_core.probe import photo_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (CIFAR / "train").is_dir():
        raise SystemExit(f"no photos at {CIFAR} (see shared/data/README.md)")
    x = photo_folder(CIFAR / "train", 8)[0].numpy()
    order = np.random.default_rng(0).permutation(len(x))
    cal, test = x[order[:32]], x[order[32:64]]

    def session(path: Path) -> ort.InferenceSession:
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    class Reader:
        def __init__(self) -> None:
            self.it = iter([{"input": cal[i : i + 16]} for i in range(0, len(cal), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="int8-variants-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        spec = NetworkSpec(InputSpec("image", 3, 32, 32), backbone=BackboneSpec("timm/efficientnet_lite0"))
        fp32.write_bytes(backbone_graph(Learner.create(spec), "input", None))
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        ref = session(fp32)
        f0 = ref.run(["features"], {"input": test})[0]
        table = variants(prepared)
        for name in args.names or list(table):
            out = Path(tmp) / f"{name}.onnx"
            started = time.perf_counter()
            options = {"extra_options": {"CalibTensorRangeSymmetric": False}, **table[name]}
            quantize_static(str(prepared), str(out), Reader(), calibrate_method=CalibrationMethod.MinMax, **options)
            seconds = time.perf_counter() - started
            s = session(out)
            f = s.run(["features"], {"input": test})[0]
            err = np.abs(f - f0).mean() / np.abs(f0).mean()
            cos = ((f * f0).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(f0, axis=1)).mean()
            times: dict[str, list[float]] = {"fp32": [], "int8": []}
            for _ in range(4):
                for key, sess in (("fp32", ref), ("int8", s)):
                    t = time.perf_counter()
                    sess.run(["features"], {"input": test})
                    times[key].append(time.perf_counter() - t)
            a, b = min(times["fp32"]), min(times["int8"])
            print(f"{name}: quantized in {seconds:.0f} s; relative error {err:.3f}, cosine {cos:.4f}; "
                  f"fp32 {len(test) / a:.1f} rows/s, int8 {len(test) / b:.1f} rows/s: {a / b:.2f}x", flush=True)


if __name__ == "__main__":
    main()
