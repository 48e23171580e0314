"""Which static-quantization settings keep the int8 backbone's answers: feature error, top-1 agreement with fp32,
accuracy and in-process speed of each variant.

    python -m benchmarks.int8_variants                        # every variant
    python -m benchmarks.int8_variants default percentile     # some of them
    python -m benchmarks.int8_variants --debug                # ONNX Runtime's qdq_loss_debug: SQNR per tensor

Exports the default photo backbone (EfficientNet-Lite0, 224 px in the graph, 32x32 inputs) once, runs ONNX
Runtime's ``quant_pre_process`` once, then quantizes it with ``quantize_static`` (QDQ) under each variant,
calibrated on ``--calibration`` cifar10-mini training photos (drawn at random over the 10 classes), and prints
for each:

- the quantization time (calibration passes included);
- the features' mean relative error against fp32 (mean |int8 - fp32| / mean |fp32|) on the test photos;
- the top-1 agreement with fp32 of a ridge head (the ``analytic`` strategy's solve) fitted on the fp32 features
  of ``--train`` training photos a class, all 10 classes, applied to both graphs' features of ``--test`` test
  photos a class, and that head's accuracy on each; and the same for a head fitted on the variant's own
  features (what a job with int8 on learns), against its own predictions on fp32 features (what the service's
  per-version check compares);
- the rows/s of both graphs at batch 8 and 32 with ``--threads`` intra-op threads (the best of ``--rounds``
  alternating runs each, so that a loaded machine's drift hits both alike).

``--debug`` quantizes with the service's current config (``model_core.quantize.QuantConfig``) and prints ONNX
Runtime's own per-tensor signal-to-quantization-noise ratios (``qdq_loss_debug``; ``xmodel``: the int8 graph's
tensor against the fp32 graph's, the error accumulated up to there; ``qdq``: that tensor's own rounding) on 8
test photos, and the weights with the worst SQNR.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


class Reader:
    """Batches of images as ONNX Runtime's calibration reader (and qdq_loss_debug's iterable) wants them."""

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self.it: Iterator[dict[str, np.ndarray]] = iter([{"input": images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def __iter__(self) -> Reader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def variants(prepared: Path) -> dict[str, dict[str, Any]]:
    """name -> (calibration count, quantize_static keywords). Each differs from ``default`` (the service's
    config before this benchmark) in one thing, or in a combination of the better ones."""
    from onnxruntime.quantization import CalibrationMethod, QuantType

    from model_core.quantize import layer_roles

    roles = layer_roles(prepared)
    s = {f"{r}_{k}": v for r, d in roles.items() for k, v in d.items()}
    u16 = QuantType.QUInt16

    def wide(tensors: list[str]) -> dict[str, Any]:  # 16-bit activations on these tensors only
        return {"TensorQuantOverrides": {t: [{"quant_type": u16}] for t in tensors}}

    base: dict[str, Any] = {"method": CalibrationMethod.MinMax, "extra": {}, "exclude": [], "calibration": 128}
    pct = {"method": CalibrationMethod.Percentile, "extra": {"CalibPercentile": 99.99}}
    return {
        "default": base,  # u8 activations, s8 per-channel weights, min-max, 128 photos, every operator
        "per_tensor": dict(base, per_channel=False),
        "minmax_256": dict(base, calibration=256),
        "minmax_avg": dict(base, extra={"CalibMovingAverage": True}),
        "percentile_99.99": {**base, **pct},
        "percentile_99.999": dict(base, method=CalibrationMethod.Percentile, extra={"CalibPercentile": 99.999}),
        "entropy": dict(base, method=CalibrationMethod.Entropy),
        "keep_clip": dict(base, extra={"QDQKeepRemovableActivations": True}),
        "float_stem_head": dict(base, exclude=[s["stem_nodes"][0], s["head_nodes"][0]]),
        "u16_stem_head": dict(base, extra=wide(s["stem_tensors"] + s["head_tensors"])),
        "u16_residual": dict(base, extra=wide(s["residual_tensors"])),
        "u16_dw": dict(base, extra=wide(s["depthwise_tensors"])),
        "u16_all": dict(base, activation_type=u16),  # a diagnostic: how much of the error is the activations'
        "bias_corrected": dict(base, bias_correction=True),  # what model_core.quantize.QuantConfig() does now
        "bias_corrected_float_stem": dict(base, bias_correction=True, exclude=s["stem_nodes"]),
        "bias_corrected_u16_stem": dict(base, bias_correction=True, extra=wide(s["stem_tensors"])),
        "bias_corrected_float_dw": dict(base, bias_correction=True, exclude=s["depthwise_nodes"]),
        "bias_corrected_float_stem_dw": dict(base, bias_correction=True, exclude=s["stem_nodes"] + s["depthwise_nodes"]),
        "bias_corrected_float_stem_dw_head": dict(base, bias_correction=True,
                                                  exclude=s["stem_nodes"] + s["depthwise_nodes"] + s["head_nodes"]),
        "percentile_u16_head": {**base, **pct, "extra": {**pct["extra"], **wide(s["head_tensors"])}},
    }  # fmt: skip


def quantize(prepared: Path, out: Path, cal: np.ndarray, v: dict[str, Any]) -> float:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from model_core.quantize import QuantConfig, correct_biases, layer_roles

    started = time.perf_counter()
    if v.get("bias_correction"):
        corrected = out.with_suffix(".corrected.onnx")
        corrected.write_bytes(prepared.read_bytes())
        excluded = [r for r, d in layer_roles(prepared).items() if d["nodes"] and set(d["nodes"]) <= set(v["exclude"])]
        correct_biases(corrected, "input", cal[: v["calibration"]], QuantConfig(float_nodes=tuple(excluded)))
        prepared = corrected
    extra = {"CalibTensorRangeSymmetric": False, **v["extra"]}
    if v.get("activation_type") is not None or "TensorQuantOverrides" in extra:
        extra["UseQDQContribOps"] = True  # 16-bit Q/DQ before opset 21
    quantize_static(
        str(prepared), str(out), Reader(cal[: v["calibration"]]), quant_format=QuantFormat.QDQ,
        activation_type=v.get("activation_type", QuantType.QUInt8), weight_type=QuantType.QInt8,
        per_channel=v.get("per_channel", True), calibrate_method=v["method"],
        nodes_to_exclude=v["exclude"] or None, extra_options=extra,
    )  # fmt: skip
    return time.perf_counter() - started


def debug(prepared: Path, tmp: Path, cal: np.ndarray, test: np.ndarray) -> None:
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    from model_core.quantize import QuantConfig, quantize_backbone

    report = quantize_backbone(prepared, cal, tmp, QuantConfig())
    aug_f, aug_q = tmp / "aug-fp32.onnx", tmp / "aug-int8.onnx"
    modify_model_output_intermediate_tensors(str(prepared), str(aug_f))
    modify_model_output_intermediate_tensors(str(report.path), str(aug_q))
    match = create_activation_matching(collect_activations(str(aug_q), Reader(test[:8], 8)),
                                       collect_activations(str(aug_f), Reader(test[:8], 8)))  # fmt: skip
    err = compute_activation_error(match)
    print(f"{'tensor':<16} {'op':<10} {'node':<24} {'xmodel dB':>9} {'qdq dB':>7}")
    for n in onnx.load(str(prepared)).graph.node:
        for o in n.output:
            if o in err:
                e = err[o]
                print(f"{o:<16} {n.op_type:<10} {n.name:<24} {e.get('xmodel_err', float('nan')):9.2f} {e.get('qdq_err', float('nan')):7.2f}")
    weights = sorted(compute_weight_error(create_weight_matching(str(prepared), str(report.path))).items(), key=lambda kv: kv[1])
    print("worst weights (SQNR dB):", ", ".join(f"{k} {v:.1f}" for k, v in weights[:8]))


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from benchmarks.int8_backbone import analytic_head, head_predict
    from model_core import quantize as q
    from model_core.config import BackboneSpec, InputSpec, NetworkSpec
    from model_core.export_frozen import backbone_graph
    from model_core.learner import Learner
    from model_core.probe import photo_folder

    def simulated(graph: Path) -> bool:  # an int8 variant's graph, with --simulate (the fp32 ones have no Q/DQ)
        return bool(args.simulate) and graph.name not in ("fp32.onnx", "prepared.onnx")

    def features(graph: Path, images: np.ndarray, threads: int = 0) -> np.ndarray:
        return q.features(graph, images, threads=threads, simulate=simulated(graph))

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--data", type=Path, default=CIFAR, help="an ImageFolder root with train/ and test/")
    parser.add_argument("--train", type=int, default=60, help="training photos a class (heads, calibration)")
    parser.add_argument("--test", type=int, default=40, help="test photos a class (error, agreement, accuracy)")
    parser.add_argument("--calibration", type=int, default=0, help="calibration photos (0: each variant's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--own-head", action="store_true", help="also fit a head on each variant's own features")
    parser.add_argument("--debug", action="store_true", help="print qdq_loss_debug's SQNR per tensor and stop")
    parser.add_argument("--simulate", action="store_true",
                        help="run the int8 graphs' Q/DQ pairs in float (session.disable_quant_qdq): the answers an "
                             "x86 processor with VNNI computes, on one without it (whose u8 x s8 sums saturate); "
                             "the speed columns then say nothing")  # fmt: skip
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"no photos at {args.data} (see shared/data/README.md)")
    tx, ty = photo_folder(args.data / "train", args.train)
    sx, sy = photo_folder(args.data / "test", args.test)
    train, test = tx.numpy(), sx.numpy()
    cal = train[np.random.default_rng(0).permutation(len(train))]  # every class in the first few

    def session(path: Path) -> ort.InferenceSession:
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        if simulated(path):
            o.add_session_config_entry(q.SIMULATE_QDQ, "1")
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    with tempfile.TemporaryDirectory(prefix="int8-variants-") as name:
        tmp = Path(name)
        fp32, prepared = tmp / "fp32.onnx", tmp / "prepared.onnx"
        spec = NetworkSpec(InputSpec("image", 3, 32, 32), backbone=BackboneSpec("timm/efficientnet_lite0"))
        fp32.write_bytes(backbone_graph(Learner.create(spec), "input", None))
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        if args.debug:
            debug(prepared, tmp, cal[:128], test[:: max(1, len(test) // 8)])
            return
        f_train, f_test = features(fp32, train, threads=args.threads), features(fp32, test, threads=args.threads)
        w = analytic_head(f_train, ty)
        p_fp32 = head_predict(w, f_test)
        print(f"fp32: ridge head on {len(train)} training photos' fp32 features, accuracy {(p_fp32 == sy).mean():.4f} "
              f"on {len(test)} test photos", flush=True)  # fmt: skip
        ref = session(fp32)
        table = variants(prepared)
        for name in args.names or list(table):
            v = dict(table[name], calibration=args.calibration or table[name]["calibration"])
            out = tmp / f"{name}.onnx"
            seconds = quantize(prepared, out, cal, v)
            f = features(out, test, threads=args.threads)
            err = np.abs(f - f_test).mean() / np.abs(f_test).mean()
            p = head_predict(w, f)
            line = (f"{name}: quantized in {seconds:.0f} s ({v['calibration']} photos); relative error {err:.3f}; "
                    f"fp32 head: agreement {(p == p_fp32).mean():.4f}, accuracy fp32 {(p_fp32 == sy).mean():.4f} "
                    f"int8 {(p == sy).mean():.4f}")  # fmt: skip
            if args.own_head:
                w8 = analytic_head(features(out, train, threads=args.threads), ty)
                a, b = head_predict(w8, f_test), head_predict(w8, f)
                line += f"; own head: agreement {(a == b).mean():.4f}, accuracy fp32 {(a == sy).mean():.4f} int8 {(b == sy).mean():.4f}"
            s = session(out)
            speed = []
            for batch in (8, 32):
                x = np.ascontiguousarray(np.resize(test, (batch, *test.shape[1:])))
                times: dict[str, list[float]] = {"fp32": [], "int8": []}
                s.run(["features"], {"input": x})
                for _ in range(args.rounds):
                    for key, sess in (("fp32", ref), ("int8", s)):
                        t = time.perf_counter()
                        sess.run(["features"], {"input": x})
                        times[key].append(time.perf_counter() - t)
                a8, b8 = min(times["fp32"]), min(times["int8"])
                speed.append(f"batch {batch}: fp32 {batch / a8:.1f}, int8 {batch / b8:.1f} rows/s, {a8 / b8:.2f}x")
            print(line + "; " + "; ".join(speed), flush=True)


if __name__ == "__main__":
    main()
