"""fp32 against int8 (static QDQ) frozen photo backbone, in process: throughput, learn time, head accuracy.

    python -m benchmarks.int8_backbone                       # cifar10-mini, 50 train / 50 test photos a class
    python -m benchmarks.int8_backbone --train 100 --test 100 --threads 2 --seconds 10

Exports the default photo backbone (EfficientNet-Lite0 from the registry package, 224 px in the graph, 32x32
inputs) alone as ONNX, quantizes it with ``model_core.quantize.quantize_backbone`` calibrated on the first
``--calibration`` training photos (as a first job's samples would be), and prints for each graph:

- rows/s at batch sizes 1 and 32 (one session, ``--threads`` intra-op threads, ``--seconds`` per figure);
- the time to compute features for 1,000 photos (what learning a photo task costs: the backbone passes);
- the accuracy on the test photos of the analytic head (ridge, GCV-chosen; the ``analytic`` strategy's
  solve) learned from that graph's own features, and the int8-vs-fp32 top-1 agreement and decision of
  ``model_core.quantize.check_int8``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model_core.config import BackboneSpec, InputSpec, NetworkSpec
from model_core.export_frozen import backbone_graph
from model_core.learner import Learner
from model_core.probe import photo_folder
from model_core.quantize import QuantConfig, check_int8, features, quantize_backbone
from model_core.strategies.analytic import solve_ridge

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def analytic_head(train: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Ridge weights (D + 1, U) from features to one-hot targets, the ridge chosen by GCV (``solve_ridge``)."""
    f = torch.from_numpy(np.hstack([train, np.ones((len(train), 1), np.float32)])).double()
    y = torch.nn.functional.one_hot(torch.from_numpy(labels).long()).double()
    w, _ = solve_ridge(f.T @ f, f.T @ y, len(f))
    return w.numpy()


def head_predict(w: np.ndarray, feats: np.ndarray) -> np.ndarray:
    return np.argmax(np.hstack([feats, np.ones((len(feats), 1), np.float32)]) @ w, axis=1)


def rows_per_second(graph: Path, images: np.ndarray, batch: int, threads: int, seconds: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), dtype=np.float32)
    session.run(None, {name: x})  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run(None, {name: x})
        done += batch
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=CIFAR, help="an ImageFolder root with train/ and test/")
    parser.add_argument("--train", type=int, default=50, help="training photos per class (the head learns them)")
    parser.add_argument("--test", type=int, default=50, help="test photos per class (accuracy and agreement)")
    parser.add_argument("--calibration", type=int, default=256, help="training photos that calibrate int8")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput figure")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"no photos at {args.data} (see shared/data/README.md)")
    train_x, train_y = photo_folder(args.data / "train", args.train)
    test_x, test_y = photo_folder(args.data / "test", args.test)
    train_np, test_np = train_x.numpy(), test_x.numpy()
    spec = NetworkSpec(InputSpec("image", 3, 32, 32), backbone=BackboneSpec("timm/efficientnet_lite0"))
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        fp32 = Path(tmp) / "backbone-fp32.onnx"
        fp32.write_bytes(backbone_graph(Learner.create(spec), "input", None))
        order = np.random.default_rng(0).permutation(len(train_np))  # calibration photos from every class
        report = quantize_backbone(fp32, train_np[order[: args.calibration]], Path(tmp), QuantConfig())
        print(f"quantized in {report.seconds:.1f} s on {report.calibration_samples} photos: "
              f"{report.fp32_bytes / 1e6:.1f} MB fp32 -> {report.int8_bytes / 1e6:.1f} MB int8 (digest {report.digest})")  # fmt: skip
        preds, rates = {}, {}
        for name, graph in (("fp32", fp32), ("int8", report.path)):
            started = time.perf_counter()
            f_train = features(graph, train_np, threads=args.threads)
            per_1000 = (time.perf_counter() - started) / len(train_np) * 1000
            w = analytic_head(f_train, train_y)
            preds[name] = head_predict(w, features(graph, test_np, threads=args.threads))
            rates[name] = [rows_per_second(graph, test_np, b, args.threads, args.seconds) for b in (1, 32)]
            acc = float((preds[name] == test_y).mean())
            print(f"{name}: batch 1 {rates[name][0]:.1f} rows/s, batch 32 {rates[name][1]:.1f} rows/s; "
                  f"features for 1,000 photos {per_1000:.2f} s; analytic head accuracy {acc:.4f} "
                  f"({len(train_np)} train, {len(test_np)} test photos)")  # fmt: skip
        print(f"int8/fp32: batch 1 {rates['int8'][0] / rates['fp32'][0]:.2f}x, "
              f"batch 32 {rates['int8'][1] / rates['fp32'][1]:.2f}x")  # fmt: skip
        print(check_int8(test_y, preds["fp32"], preds["int8"]).reason)


if __name__ == "__main__":
    main()
