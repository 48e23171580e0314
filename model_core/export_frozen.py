"""ONNX export of a classifier with a frozen backbone: the backbone graph once, the head per version.

Tracing a pretrained backbone through the exporter takes tens of seconds on a CPU, and with a frozen backbone
every version of a classifier shares the same one. So the backbone (with the in-graph resizing and
normalisation) is exported once and kept in a cache folder under a digest of its spec and weights; each
version's head is written directly as ONNX (one Gemm per head block, after the random-feature expansion's Gemm
and Relu when the head has one, or a class-model block's quadratic forms, concatenated, then the calibration
temperature, exactly as ``IncrementalClassifier.forward_head`` computes it: ``head_model``). The service stores
the backbone graph once in its artifact store, referenced by sha256 from each version's manifest, and each
version's own ``head.onnx`` holds only the head (``model_core.export.export_head``); ``export_frozen`` joins
both into one whole model, input (B, *shape) -> logits (B, U), for callers that want one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model_core.files import write_atomic
from model_core.graphs import FEATURES, compose
from model_core.learner import Learner
from model_core.networks.gaussian_head import GaussianHead, onnx_nodes
from model_core.networks.random_features import ExpandedLinear, expansion_of
from model_core.quantize import SIMULATE_QDQ, backbone_session
from model_core.text import trim_padding

EXPANDED = "expansion.out"  # the random features (B, width) that ``ExpandedLinear`` blocks read


class _Features(nn.Module):
    """(B, *input_shape) -> (B, feature_dim): normalisation and backbone, the part every version shares."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.model = learner.model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


def backbone_digest(learner: Learner) -> str:
    """A digest of everything the backbone graph depends on: the spec and every backbone tensor."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"input": learner.spec.to_dict()["input"], "backbone": learner.spec.to_dict()["backbone"],
                         "preprocessing": learner.spec.to_dict()["preprocessing"]}, sort_keys=True,
                        default=str).encode())  # fmt: skip
    for name, tensor in sorted({**dict(learner.model.normalize.state_dict()),
                                **{f"b.{k}": v for k, v in learner.model.backbone.state_dict().items()}}.items()):  # fmt: skip
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone_graph(learner: Learner, input_name: str, cache_dir: Path | None) -> bytes:
    """The backbone's ONNX bytes, from ``cache_dir`` when an identical backbone was exported before."""
    path = cache_dir / f"features-{backbone_digest(learner)}.onnx" if cache_dir is not None else None
    if path is not None and path.exists():
        return path.read_bytes()
    model = _Features(learner).eval()
    example = torch.rand(2, *learner.spec.input.shape, generator=torch.Generator().manual_seed(0))
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1 << 20)}
    if learner.spec.input.kind == "text":  # token ids; the sequence axis is dynamic (callers trim the padding)
        example = torch.randint(1, 1000, (2, learner.spec.input.max_tokens), generator=torch.Generator().manual_seed(0))
        example = example.float()
        axes[1] = torch.export.Dim("tokens", min=1, max=learner.spec.input.max_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, input_names=[input_name], output_names=[FEATURES],
            dynamic_shapes=(axes,), verbose=False,
        )  # fmt: skip
    assert program is not None
    import onnx

    buf = io.BytesIO()
    onnx.save_model(program.model_proto, buf)
    data = buf.getvalue()
    if path is not None:  # written under a temporary name, then renamed: readers never see half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return data


def _served_outputs(learner: Learner, nodes: list[Any], inits: list[Any], outs: list[str], output_name: str,
                    novelty: nn.Module | None, opset: int) -> list[Any]:  # fmt: skip
    """Append to ``nodes``/``inits`` what follows the head blocks' outputs ``outs``: their concatenation, the
    calibration temperature folded in (served logits = raw logits * (1 / T), model_core.calibration), and with
    ``novelty`` its score from the features and the served logits; returns the graph's outputs."""
    from onnx import TensorProto, helper, numpy_helper

    inits.append(numpy_helper.from_array(learner.model.logit_scale.detach().cpu().float().numpy(), "logit_scale"))
    nodes += [helper.make_node("Concat", outs, ["raw_logits"], axis=1),
              helper.make_node("Mul", ["raw_logits", "logit_scale"], [output_name])]  # fmt: skip
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", learner.model.num_units])]
    if novelty is not None:
        from model_core.novelty import onnx_nodes as novelty_nodes

        more_nodes, more_inits = novelty_nodes(novelty, FEATURES, output_name, "novelty", opset)
        nodes += more_nodes
        inits += more_inits
        outputs.append(helper.make_tensor_value_info("novelty", TensorProto.FLOAT, ["batch"]))
    return outputs


def head_model(learner: Learner, output_name: str, novelty: nn.Module | None = None, *, opset: int = 18,
               ir_version: int = 10, opset_imports: list[Any] | None = None) -> Any:  # fmt: skip
    """The head's graph: ``features`` (B, feature_dim) -> ``output_name`` (B, U), and with ``novelty``
    (``model_core.novelty``) a second output "novelty" (B,) from the same features. Whatever follows the
    frozen features is here (one Gemm per head block, or a class-model block's quadratic forms, concatenated,
    exactly as ``IncrementalClassifier.forward_head`` computes it); the backbone is not."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    expansion = expansion_of(learner.model.heads)
    if expansion is not None:  # the random features, once for every block that reads them
        inits += [numpy_helper.from_array(expansion.weight.detach().cpu().float().numpy(), "expansion.weight"),
                  numpy_helper.from_array(expansion.bias.detach().cpu().float().numpy(), "expansion.bias")]  # fmt: skip
        nodes += [helper.make_node("Gemm", [FEATURES, "expansion.weight", "expansion.bias"], ["expansion.linear"],
                                   transB=1),
                  helper.make_node("Relu", ["expansion.linear"], [EXPANDED])]  # fmt: skip
    for i, head in enumerate(learner.model.heads):
        if isinstance(head, GaussianHead):  # per-class log-likelihoods (the class_models strategy)
            head_nodes, head_inits = onnx_nodes(head, FEATURES, f"head{i}.out", f"head{i}", opset)
            nodes += head_nodes
            inits += head_inits
            outs.append(f"head{i}.out")
            continue
        w = head.weight.detach().cpu().double().numpy()  # type: ignore[operator]
        b = head.bias.detach().cpu().double().numpy()  # type: ignore[operator]
        if not isinstance(head, ExpandedLinear):  # the features' standardisation folded in: W' = W / s, b' = b - W' m
            mean = learner.model.feature_mean.detach().cpu().double().numpy()
            w = w / learner.model.feature_scale.detach().cpu().double().numpy()
            b = b - w @ mean
        w, b = w.astype(np.float32), b.astype(np.float32)
        inits += [numpy_helper.from_array(np.ascontiguousarray(w), f"head{i}.weight"),
                  numpy_helper.from_array(b, f"head{i}.bias")]  # fmt: skip
        source = EXPANDED if isinstance(head, ExpandedLinear) else FEATURES
        nodes.append(helper.make_node("Gemm", [source, f"head{i}.weight", f"head{i}.bias"], [f"head{i}.out"],
                                      transB=1))  # fmt: skip
        outs.append(f"head{i}.out")
    outputs = _served_outputs(learner, nodes, inits, outs, output_name, novelty, opset)
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", learner.model.feature_dim])],
        outputs, inits,
    )  # fmt: skip
    imports = opset_imports if opset_imports is not None else [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=list(imports))
    model.ir_version = ir_version
    return model


def backbone_opset(backbone: Any) -> int:
    return max((o.version for o in backbone.opset_import if o.domain in ("", "ai.onnx")), default=18)


def export_frozen(
    learner: Learner, input_name: str, output_name: str, cache_dir: Path | None, novelty: nn.Module | None = None
) -> bytes:
    """The whole graph (backbone from the cache, head written here) as ONNX bytes, without metadata; with
    ``novelty`` (``model_core.novelty``), a second output "novelty" (B,) computed from the same features."""
    import onnx

    backbone = onnx.load_from_string(backbone_graph(learner, input_name, cache_dir))
    head = head_model(learner, output_name, novelty, opset=backbone_opset(backbone), ir_version=backbone.ir_version,
                      opset_imports=list(backbone.opset_import))  # fmt: skip
    return compose(backbone, head)


def reads_raw_input(learner: Learner) -> bool:
    """True when every head block is a class-model block on the raw input (``class_models`` on small inputs):
    the backbone takes no part in the logits, so the whole graph is written directly, without the exporter."""
    model = learner.model
    return (getattr(model, "task_network", None) is None and len(model.heads) > 0
            and all(isinstance(h, GaussianHead) and h.reads_input for h in model.heads))  # fmt: skip


def raw_input_model(learner: Learner, input_name: str, output_name: str, novelty: nn.Module | None = None) -> Any:
    """The whole graph of a classifier whose head blocks all read the raw input (``reads_raw_input``):
    ``input_name`` (B, *shape) flattened -> the class-model blocks -> ``output_name``; novelty from the logits
    (the only novelty such a version has: ``model_core.novelty.novelty_module``)."""
    from onnx import TensorProto, helper

    opset = 18
    nodes, inits, outs = [helper.make_node("Flatten", [input_name], [FEATURES], axis=1)], [], []
    for i, head in enumerate(learner.model.heads):
        assert isinstance(head, GaussianHead)
        head_nodes, head_inits = onnx_nodes(head, FEATURES, f"head{i}.out", f"head{i}", opset, raw_input=True)
        nodes += head_nodes
        inits += head_inits
        outs.append(f"head{i}.out")
    outputs = _served_outputs(learner, nodes, inits, outs, output_name, novelty, opset)
    shape: list[str | int | None] = ["batch", *learner.spec.input.shape]
    graph = helper.make_graph(nodes, "raw-heads", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
                              outputs, inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


class OnnxFeatures:
    """Frozen-backbone features through ONNX Runtime, from the same cached graph every version serves.

    On a CPU, ONNX Runtime runs a pretrained backbone several times faster than eager torch, and a job spends
    most of its time computing features; the served graph then shares the very backbone the head was trained
    on. Set as ``Learner.feature_fn`` by the worker.
    """

    def __init__(self, learner: Learner, cache_dir: Path | None, threads: int = 0, batch_size: int = 64,
                 graph: bytes | None = None, simulate_qdq: bool = False) -> None:  # fmt: skip
        """``graph``: another graph of the same backbone to run (e.g. its int8 version, model_core.quantize);
        default the fp32 backbone graph, exported once into ``cache_dir``. ``simulate_qdq``: run an int8 graph's
        Q/DQ pairs in float, what exact int8 kernels compute (``model_core.quantize.int8_kernels``)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
        if simulate_qdq:
            options.add_session_config_entry(SIMULATE_QDQ, "1")
        graph = graph if graph is not None else backbone_graph(learner, "input", cache_dir)
        self.session = backbone_session(graph, options)
        self.batch_size = batch_size
        self.text = learner.spec.input.kind == "text"

    def __call__(self, x: Tensor) -> Tensor:
        """(N, *input_shape) -> (N, feature_dim), float32 on the cpu."""
        rows = x.float().cpu().numpy()
        order = np.arange(len(rows))
        if self.text:  # messages of like length batched together, each batch cut to its longest (exact)
            order = np.argsort(-(rows != 0).sum(axis=1), kind="stable")
        parts = []
        for i in range(0, len(rows), self.batch_size):
            batch = rows[order[i : i + self.batch_size]]
            parts.append(self.session.run([FEATURES], {"input": trim_padding(batch) if self.text else batch})[0])
        out = np.empty((len(rows), self.feature_dim(parts)), dtype=np.float32)
        if len(rows):
            out[order] = np.concatenate(parts)
        return torch.from_numpy(out)

    def feature_dim(self, parts: list[np.ndarray]) -> int:
        return int(parts[0].shape[1]) if parts else int(self.session.get_outputs()[0].shape[1])
