"""An int8 frozen backbone: static QDQ quantization with ONNX Runtime's own tools, and the check that decides
whether it may serve.

The frozen backbone's graph (``model_core.export_frozen.backbone_graph``: in-graph resize and normalisation,
then the network, (B, C, H, W) in [0, 1] -> (B, D) features) is quantized once, calibrated on real images,
and stored under a digest of the fp32 graph, the calibration images and every quantization setting, so the
same int8 graph is found again and a change to any of them gives another one.

Calibration set: the samples of the classifier's first learn job (at most ``QuantConfig.calibration_samples``
of them, spread over its classes). They are real photos of what the classifier will serve, nothing needs
shipping (the project's photo sets may not be copied into the package, and a set shipped for every deployment
would be another domain than a user's), and they are at hand when the backbone is first needed. A poor
calibration is caught by ``check_int8`` on the evaluation set, which then keeps fp32 and says why.

EfficientNet-Lite was designed for this: ReLU6 activations bound every range, so min-max calibration on a
few hundred images fixes the scales, and no squeeze-excite layer sits between convolutions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_core.files import write_atomic

FEATURES = "features"  # the backbone graph's output (model_core.export_frozen.FEATURES)
LAYER_ROLES = ("stem", "head", "depthwise", "residual")  # the parts ``layer_roles`` finds


# x86 instructions with which ONNX Runtime's u8 x s8 kernels sum products in 32 bits: exactly what the QDQ graph
# computes. Without them (AVX2 alone) the kernels add pairs of products in 16 bits (VPMADDUBSW), which saturate.
EXACT_X86_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SIMULATE_QDQ = "session.disable_quant_qdq"  # ONNX Runtime's session option: run each Q/DQ pair in float
# ONNX Runtime graph rewrites a backbone session must not make. WeightBiasQuantization (basic level, ONNX Runtime
# 1.31.1) quantizes the float weights of a Conv whose input comes from a DequantizeLinear with one scale for the whole
# tensor: the depthwise convolutions left in float (QuantConfig.float_nodes) then ran on int8 weights with one scale
# for all their channels (test_quantize.py::test_parts_left_in_float_stay_float_when_they_run reads it from the graph
# the session optimized), and stem and depthwise in float gave features 0.531 off fp32's with the rewrite, 0.090
# without it (``python -m benchmarks.int8_variants bias_corrected_float_stem_dw --calibration 64 --own-head``, AVX-512
# VNNI; docs/guides/int8-backbone.md).
# No other graph is touched by it: an fp32 graph has no DequantizeLinear, the default int8 graph no float weights.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)
INT8_KIND = "onnx-backbone-int8"  # the kind of a version manifest's int8 backbone reference


@dataclass(frozen=True)
class Int8Kernels:
    """Whether this processor's int8 kernels compute what the int8 graph says (``exact``; where not, jobs run its
    Q/DQ pairs in float), and why; ``serve_simulated``: serving runs them in float too (``kernels_for("simulate")``),
    where otherwise a process whose kernels are not exact serves fp32."""

    exact: bool
    reason: str
    serve_simulated: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"exact": self.exact, "reason": self.reason, "simulated": not self.exact}


def int8_kernels(flags: set[str] | None = None, machine: str | None = None) -> Int8Kernels:
    """This processor's int8 kernels (``flags``, ``machine``: /proc/cpuinfo's flags and ``platform.machine()``,
    read when None). On x86 without VNNI or AMX, ONNX Runtime's u8 x s8 convolutions add pairs of products in
    16 bits and saturate: on an AVX2-only AMD EPYC the default photo backbone's int8 features were 0.66 off fp32's
    (mean relative error), against 0.20 for the same graph run exactly (``python -m benchmarks.int8_variants
    bias_corrected --calibration 64 [--simulate]``), and a head's top-1 agreed with fp32 on 0.72 of the photos
    against 0.94. There, a job runs the int8 graph's Q/DQ pairs in float (``SIMULATE_QDQ``: the answers a VNNI
    processor computes, slower than fp32) and serving keeps fp32 (faster there, and what each version's check
    measured as the fallback)."""
    import platform

    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return Int8Kernels(True, f"{machine}: ONNX Runtime's int8 kernels here sum in 32 bits (not measured by Engram)")
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
        except OSError:
            return Int8Kernels(False, "x86 processor whose instruction set could not be read (/proc/cpuinfo): "
                                      "int8 kernels treated as saturating")  # fmt: skip
    found = [f for f in EXACT_X86_FLAGS if f in flags]
    if found:
        return Int8Kernels(True, f"x86 with {', '.join(found)}: int8 products summed in 32 bits")
    return Int8Kernels(False, "x86 without VNNI or AMX (no avx512_vnni, avx_vnni or amx_int8 among the processor's "
                              "flags): ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits and saturate")  # fmt: skip


@functools.cache
def this_processor() -> Int8Kernels:
    """``int8_kernels()`` of the processor this process runs on, read once."""
    return int8_kernels()


KERNEL_MODES = ("auto", "native", "simulate")  # Settings.int8_kernels


def kernels_for(mode: str, processor: Int8Kernels | None = None) -> Int8Kernels:
    """How this process runs int8 graphs (``Settings.int8_kernels``): "auto" reads the processor (``processor``, or
    ``this_processor()`` when None); "native" trusts its int8 kernels (a processor whose flags a hypervisor hides); "simulate"
    runs every int8 graph's Q/DQ pairs in float, serving included (exact answers, slower than fp32: to measure on a
    processor without VNNI what one with it serves)."""
    if mode == "auto":
        return processor or this_processor()
    if mode == "native":
        return Int8Kernels(True, "ENGRAM_INT8_KERNELS=native: this processor's int8 kernels are trusted")
    if mode == "simulate":
        return Int8Kernels(False, "ENGRAM_INT8_KERNELS=simulate: int8 graphs run their Q/DQ pairs in float", True)
    raise ValueError(f"int8 kernels mode {mode!r}: choose among {', '.join(KERNEL_MODES)}")


@dataclass(frozen=True)
class QuantConfig:
    """How a backbone is quantized; every field is part of the int8 graph's digest."""

    per_channel: bool = True  # one weight scale per output channel: depthwise convolutions need it
    activations: str = "uint8"  # x86's int8 kernels (VNNI, AMX) take u8 activations with s8 weights
    weights: str = "int8"
    method: str = "minmax"  # ReLU6 bounds the activations, so their min and max are the right range
    reduce_range: bool = False  # 7-bit weights: for x86 without VNNI, whose u8 x s8 pair sums can saturate
    quantize_bias: bool = True  # False keeps biases float (no int32 overflow where a weight scale is tiny)
    calibration_samples: int = 256  # at most this many images fix the ranges (the rest are not read)
    calibration_batch: int = 32
    op_types: tuple[str, ...] = ()  # the operators to quantize; () is every one the quantizer supports
    percentile: float = 99.999  # the percentile of each activation's histogram its range ends at (method "percentile")
    moving_average: bool = False  # min-max: the ranges are moving averages of each batch's, not the extremes
    # Parts of the network (``layer_roles``: "stem", "head", "depthwise", "residual") whose activations are
    # quantized to 16 bits (their convolutions then run in float): mixed precision where int8 loses the most.
    wide: tuple[str, ...] = ()
    # Parts left wholly in float (``nodes_to_exclude``; the service's ``ENGRAM_INT8_FLOAT_PARTS`` defaults to this).
    # The stem (the first convolution, 27 weights a channel) by default: in float, the features' error falls from
    # 0.196 to 0.141 at 0.95x the all-int8 graph's rows/s (``benchmarks.int8_variants``), and through the service
    # cifar10-mini's final accuracy from 0.007 under fp32's to equal on 5x2 (0.789 both) and from 0.005 to 0.002
    # under on 10x1, int8 serving every version of 5x2 (``benchmarks.gate_truth``; docs/guides/int8-backbone.md,
    # "The stem in float")
    float_nodes: tuple[str, ...] = ("stem",)
    # Each convolution's bias less the mean shift its weights' int8 rounding causes on the calibration images
    # (``correct_biases``): the depthwise and stem convolutions, a few weights per channel, shift the most.
    bias_correction: bool = True


@dataclass(frozen=True)
class QuantReport:
    """What ``quantize_backbone`` wrote, and from what."""

    path: Path  # the int8 graph
    digest: str  # of the fp32 graph, the calibration images and the config (names the cached file)
    fp32_sha256: str
    calibration_sha256: str
    calibration_samples: int
    config: QuantConfig
    fp32_bytes: int
    int8_bytes: int
    seconds: float  # quantizing, calibration passes included (0 when found in the cache)
    cached: bool

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class QuantCheck:
    """The int8 and fp32 graphs compared through one head on one evaluation set, and the decision."""

    samples: int
    agreement: float  # fraction of samples whose top-1 class is the same from both graphs
    accuracy_fp32: float
    accuracy_int8: float
    max_disagreement: float  # the tolerance rule's two bounds, as applied
    max_accuracy_drop: float
    serve_int8: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def _spread(images: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``images``, evenly spaced (a job's samples come grouped by class)."""
    if len(images) <= n:
        return images
    picked: np.ndarray = images[np.linspace(0, len(images) - 1, n).round().astype(int)]
    return picked


def config_digest(fp32: bytes, config: QuantConfig) -> str:
    """A digest of what an int8 graph depends on but its calibration images: the fp32 graph, every quantization
    setting and ONNX Runtime's version. Two graphs with the same one differ only in the photos they were calibrated
    on, so one can stand for the other (service.jobs.int8: one int8 graph per backbone in a deployment)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(hashlib.sha256(fp32).digest())
    h.update(json.dumps({**asdict(config), "onnxruntime": _ort_version()}, sort_keys=True).encode())
    return h.hexdigest()


def quantization_digest(fp32: bytes, calibration: np.ndarray, config: QuantConfig) -> str:
    """A digest of everything the int8 graph depends on: ``config_digest``'s, and the calibration images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(config_digest(fp32, config).encode())
    h.update(hashlib.sha256(np.ascontiguousarray(calibration, dtype=np.float32).tobytes()).digest())
    h.update(str(calibration.shape).encode())
    return h.hexdigest()


class _Batches:
    """The calibration images as ONNX Runtime's CalibrationDataReader wants them: one feed dict per call."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = (
            {input_name: images[i : i + batch]} for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_backbone(
    fp32_path: Path, calibration_images: np.ndarray, out_dir: Path, config: QuantConfig = QuantConfig()
) -> QuantReport:
    """The int8 (QDQ) version of the backbone graph at ``fp32_path``, calibrated on ``calibration_images``
    ((N, C, H, W) float32 in [0, 1], the graph's own input), written to ``out_dir/backbone-int8-<digest>.onnx``
    (or found there, when the same graph, images and config were quantized before)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    fp32 = Path(fp32_path).read_bytes()
    calibration = _spread(np.ascontiguousarray(calibration_images, dtype=np.float32), config.calibration_samples)
    if calibration.ndim < 2 or len(calibration) == 0:
        raise ValueError(f"calibration needs at least one image, got an array of shape {calibration_images.shape}")
    digest = quantization_digest(fp32, calibration, config)
    out = Path(out_dir) / f"backbone-int8-{digest}.onnx"
    report = dict(digest=digest, fp32_sha256=hashlib.sha256(fp32).hexdigest(),
                  calibration_sha256=hashlib.sha256(calibration.tobytes()).hexdigest(),
                  calibration_samples=len(calibration), config=config, fp32_bytes=len(fp32))  # fmt: skip
    if out.exists():
        return QuantReport(path=out, int8_bytes=out.stat().st_size, seconds=0.0, cached=True, **report)  # type: ignore[arg-type]
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}  # fmt: skip
    input_name = _input_name(fp32)
    extra: dict[str, object] = {"CalibTensorRangeSymmetric": False, "QuantizeBias": config.quantize_bias}
    if config.method == "percentile":
        extra["CalibPercentile"] = config.percentile
    if config.moving_average:
        extra["CalibMovingAverage"] = True
    with tempfile.TemporaryDirectory(prefix="engram-quant-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference and graph fusions first, as ONNX Runtime's quantization guide asks: a Conv fused
        # with its BatchNormalization and Clip quantizes as one operator.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        if config.bias_correction:
            correct_biases(prepared, input_name, calibration, config)
        roles = layer_roles(prepared)
        wide = [t for r in config.wide for t in roles[r]["tensors"]]
        if wide:  # 16-bit Q/DQ need ONNX Runtime's own operators before opset 21
            extra.update(TensorQuantOverrides={t: [{"quant_type": QuantType.QUInt16}] for t in wide}, UseQDQContribOps=True)
        excluded = [n for r in config.float_nodes for n in roles[r]["nodes"]]
        quantize_static(
            str(prepared), str(quantized), _Batches(input_name, calibration, config.calibration_batch),
            quant_format=QuantFormat.QDQ, activation_type=types[config.activations],
            weight_type=types[config.weights], per_channel=config.per_channel, reduce_range=config.reduce_range,
            calibrate_method=methods[config.method], op_types_to_quantize=list(config.op_types) or None,
            nodes_to_exclude=excluded or None, extra_options=extra,
        )  # fmt: skip
        data = quantized.read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)  # a temporary name, then renamed: readers never see half a file
    return QuantReport(path=out, int8_bytes=len(data), seconds=time.perf_counter() - started, cached=False, **report)  # type: ignore[arg-type]


def _rounded(w: np.ndarray, config: QuantConfig) -> np.ndarray:
    """``w`` as the quantizer rounds it: symmetric int8 ([-127, 127]; 7 bits with ``reduce_range``), one scale
    per output channel or one for the tensor."""
    q = 63 if config.reduce_range else 127
    top = np.abs(w).reshape(w.shape[0], -1).max(1) if config.per_channel else np.full(w.shape[0], np.abs(w).max())
    scale = (top / q).reshape(-1, *[1] * (w.ndim - 1))
    scale[scale == 0] = 1.0
    return np.asarray(np.clip(np.round(w / scale), -q, q) * scale, dtype=np.float32)


def correct_biases(graph: Path, input_name: str, images: np.ndarray, config: QuantConfig) -> int:
    """Bias correction (Nagel et al., 2019, "Data-Free Quantization"), in place on the float graph at ``graph``:
    rounding a convolution's weights to int8 moves its output's mean by (W_int8 - W) E[x], per output channel;
    with E[x], each input channel's mean over ``images``, from the float graph, the bias is lowered by that shift
    so the int8 graph's outputs keep the float graph's means. Only weights the quantizer rounds (int8, per the
    config) are corrected; padding is ignored (E[x] over the whole map). Returns the convolutions corrected."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    if config.weights != "int8" or (config.op_types and "Conv" not in config.op_types):
        return 0
    model = onnx.load(str(graph))
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[1] in inits
             and n.input[2] in inits and n.name not in set(layer_nodes(graph, config.float_nodes))]  # fmt: skip
    if not convs:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(dict.fromkeys(n.input[0] for n in convs))
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in outputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    sums, count = [np.zeros(1)] * len(names), 0
    for i in range(0, len(images), config.calibration_batch):
        batch = images[i : i + config.calibration_batch]
        outs = session.run(names, {input_name: batch})
        sums = [s + o.astype(np.float64).mean(axis=(0, *range(2, o.ndim))) * len(batch) for s, o in zip(sums, outs, strict=True)]
        count += len(batch)
    means = {n: s / count for n, s in zip(names, sums, strict=True)}
    for n in convs:
        w = numpy_helper.to_array(inits[n.input[1]])
        delta = (_rounded(w, config) - w).astype(np.float64)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        e = means[n.input[0]].reshape(group, -1)  # each group's input channels
        per_group = delta.reshape(group, w.shape[0] // group, w.shape[1], -1).sum(axis=3)  # (G, out/G, in/G)
        shift = np.einsum("goi,gi->go", per_group, e).reshape(-1)
        bias = numpy_helper.to_array(inits[n.input[2]])
        inits[n.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(bias.dtype), n.input[2]))
    onnx.save_model(model, str(graph))
    return len(convs)


def layer_nodes(graph: Path, roles: tuple[str, ...]) -> list[str]:
    """The node names of ``roles`` in ``graph`` (``layer_roles``)."""
    if not roles:
        return []
    found = layer_roles(graph)
    return [n for r in roles for n in found[r]["nodes"]]


ROLES = ("stem", "head", "depthwise", "residual")


def layer_roles(graph: Path) -> dict[str, dict[str, list[str]]]:
    """The parts of a convolutional backbone graph that quantize worst, by role: {role: {"nodes": [...],
    "tensors": [...]}} (each empty where the graph has no such part, e.g. one without convolutions).

    - "stem": the first convolution, and its activation's output (ReLU6 fused into it);
    - "head": the last convolution, its activation's output and the global pooling's;
    - "depthwise": the depthwise (grouped) convolutions, and their activations' outputs;
    - "residual": the projection convolutions (no activation) and the residual adds' outputs: the stream that
      every block adds to."""
    import onnx

    nodes = onnx.load(str(graph)).graph.node
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def out(n: onnx.NodeProto) -> str:  # a conv's output after its Clip or Relu, where it has one
        nxt = consumers.get(n.output[0], [])
        return str(nxt[0].output[0]) if len(nxt) == 1 and nxt[0].op_type in ("Clip", "Relu") else str(n.output[0])

    convs = [n for n in nodes if n.op_type == "Conv"]
    group = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs}
    pools = [n for n in nodes if n.op_type in ("ReduceMean", "GlobalAveragePool")]
    dw = [n for n in convs if group[n.name] > 1]
    pwl = [n for n in convs[1:-1] if group[n.name] == 1 and out(n) == n.output[0]]
    adds = [n for n in nodes if n.op_type == "Add"]
    roles = {
        "stem": (convs[:1], [out(n) for n in convs[:1]]),
        "head": (convs[-1:] + pools, [out(n) for n in convs[-1:]] + [str(n.output[0]) for n in pools]),
        "depthwise": (dw, [out(n) for n in dw]),
        "residual": (pwl + adds, [str(n.output[0]) for n in pwl + adds]),
    }
    return {r: {"nodes": [str(n.name) for n in ns], "tensors": ts} for r, (ns, ts) in roles.items()}


def _input_name(graph: bytes) -> str:
    import onnx

    model = onnx.load_from_string(graph)
    inits = {i.name for i in model.graph.initializer}
    return str(next(i.name for i in model.graph.input if i.name not in inits))


def backbone_session(graph: Path | str | bytes, options: Any) -> Any:
    """An ONNX Runtime CPU session of a backbone graph (fp32 or int8; ``options``: its ``SessionOptions``), without
    the graph rewrites of ``DISABLED_OPTIMIZERS``: every session that runs a backbone is made here."""
    import onnxruntime as ort

    model = str(graph) if isinstance(graph, Path) else graph
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))  # fmt: skip


def features(
    graph: Path | bytes, images: np.ndarray, batch: int = 64, threads: int = 0, simulate: bool = False
) -> np.ndarray:
    """(N, D) float32 features of ``images`` ((N, C, H, W) in [0, 1]) through the backbone graph; ``simulate``:
    its Q/DQ pairs run in float (what exact int8 kernels compute, on a processor whose kernels saturate)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per core
    if simulate:
        options.add_session_config_entry(SIMULATE_QDQ, "1")
    session = backbone_session(graph, options)
    name = session.get_inputs()[0].name
    images = np.ascontiguousarray(images, dtype=np.float32)
    return np.concatenate([session.run([FEATURES], {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)])


# The tolerance rule's defaults (the service's ENGRAM_INT8_MAX_ACCURACY_DROP and ENGRAM_INT8_MAX_DISAGREEMENT).
# The accuracy bound is the issue's own bar for int8 (final accuracy within 0.005 of fp32), widened to one
# sample on a small evaluation set, where one flipped photo is more than that. The disagreement bound: the top-1
# classes of the two graphs may differ on at most this fraction of the evaluation samples. Measured on
# cifar10-mini 5x2 with the analytic head learned from int8 features, the graphs disagreed on 2.5-8.4% of the
# held-out photos while int8's accuracy stayed within -0.008..+0.009 of fp32's (docs/guides/int8-backbone.md).
MAX_ACCURACY_DROP = 0.005
MAX_DISAGREEMENT = 0.05


def check_int8(
    labels: np.ndarray,
    fp32_predictions: np.ndarray,
    int8_predictions: np.ndarray,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    max_disagreement: float = MAX_DISAGREEMENT,
) -> QuantCheck:
    """Whether the int8 graph may serve: the same head (learned from each graph's own features) predicted
    the evaluation samples ``labels`` as ``fp32_predictions`` and ``int8_predictions`` ((N,) class indices).

    int8 serves only if its accuracy is at most ``max_accuracy_drop`` (or one sample, if more) below fp32's and
    the two disagree on at most ``max_disagreement`` of the samples; otherwise fp32 serves, and ``reason`` says
    which bound was passed and by how much."""
    labels, a, b = (np.asarray(v).reshape(-1) for v in (labels, fp32_predictions, int8_predictions))
    if not len(labels) == len(a) == len(b) or len(labels) == 0:
        raise ValueError(f"labels and predictions must be the same non-zero length, got {len(labels)}, {len(a)}, {len(b)}")
    n = len(labels)
    agreement = float((a == b).mean())
    acc_fp32, acc_int8 = float((a == labels).mean()), float((b == labels).mean())
    allowed_drop = max(max_accuracy_drop, 1.0 / n) if max_accuracy_drop > 0 else 0.0
    drop, disagreement = acc_fp32 - acc_int8, 1.0 - agreement
    problems = []
    if drop > allowed_drop + 1e-12:
        problems.append(f"int8 accuracy {acc_int8:.4f} is {drop:.4f} below fp32's {acc_fp32:.4f} (at most {allowed_drop:.4f} allowed)")
    if disagreement > max_disagreement + 1e-12:
        problems.append(f"the int8 and fp32 graphs disagree on {disagreement:.4f} of {n} samples (at most {max_disagreement:.4f} allowed)")
    if problems:
        reason = "fp32 serves: " + "; ".join(problems)
    else:
        reason = (f"int8 serves: accuracy {acc_int8:.4f} against fp32's {acc_fp32:.4f}, top-1 agreement {agreement:.4f} "
                  f"on {n} samples, within the tolerance (drop <= {allowed_drop:.4f}, disagreement <= {max_disagreement:.4f})")  # fmt: skip
    return QuantCheck(n, agreement, acc_fp32, acc_int8, max_disagreement, allowed_drop, not problems, reason)
