"""A head block whose logits are per-class log-likelihoods under frozen class models (the ``class_models`` strategy).

Logit u is log p(x | class u) (+ log of the class's sample count when a frequency prior is asked for) under the
class's mixture of probabilistic PCA Gaussians (``model_core.networks.class_gaussians``), divided by sqrt(D), so
the classifier's argmax is the generative classifier's. The division is one fixed temperature for the whole
classifier (every block of it models the same D values), so it never changes the argmax; it keeps the served
softmax calibrated (expected calibration error 0.02 and 0.03 on 8x8 digits and mnist-5k, against 0.01 and 0.04
undivided and 0.64 and 0.68 divided by D) and the logits' sensitivity to the backbone's rounding (ONNX Runtime's
features differ from torch's in the last bits) inside the export's parity tolerance. Each component's log density is a quadratic form computed from stored
buffers, never from a D x D matrix:

    log N(x; mu, W W^T + v I) = const - 0.5 * (|x - mu|^2 / v - |G x - G mu|^2)

with |x - mu|^2 = |x|^2 - 2 mu.x + |mu|^2, G the (rank, D) Woodbury projection and const holding the log
weight and the log determinant (matrix determinant lemma); a class's logit is the logsumexp over its
components. The arithmetic runs in float64 (the large parameters are stored as float32 and cast), so torch and
the exported ONNX graph agree to far below the export's parity tolerance although the values are large.

A block reads either the frozen backbone's features or, when the backbone trains (a network from scratch),
the flattened raw input (``space``), the space its class models were fitted in. Its state is plain tensors:
component means (averages of at least ``ClassGaussians.min_samples`` samples) and derived terms, no sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from model_core.networks.class_gaussians import ClassGaussians

PAD_CONST = -1e30  # log weight of a padding component (classes of a block with fewer components than the most)
SPACES = ("features", "input")


class GaussianHead(nn.Module):
    """(B, D) -> (B, units) log-likelihood logits of ``units`` classes, each a mixture of K PPCA components.

    Buffers, with C = units * K components (padding components repeat a real one with weight zero):
    means (C, D) and proj (C * rank, D) float32; mean_sq |mu|^2 (C,), proj_mean G mu (C * rank,),
    inv_var 1 / v (C,), const (units, K), scale 1 / sqrt(D) () float64; space_input () int64, 1 when the block
    reads the raw input.
    """

    means: Tensor
    proj: Tensor
    mean_sq: Tensor
    proj_mean: Tensor
    inv_var: Tensor
    const: Tensor
    space_input: Tensor
    scale: Tensor

    def __init__(self, units: int, components: int, rank: int, dim: int, space: str = "features") -> None:
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}; got {space!r}")
        self.out_features, self.components, self.rank, self.dim = units, components, rank, dim
        self.space = space  # a Python attribute, so that tracing never reads a tensor to route the input
        c = units * components
        self.register_buffer("means", torch.zeros(c, dim))
        self.register_buffer("proj", torch.zeros(c * rank, dim))
        self.register_buffer("mean_sq", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("proj_mean", torch.zeros(c * rank, dtype=torch.float64))
        self.register_buffer("inv_var", torch.ones(c, dtype=torch.float64))
        self.register_buffer("const", torch.zeros(units, components, dtype=torch.float64))
        self.register_buffer("space_input", torch.tensor(int(space == "input")))
        self.register_buffer("scale", torch.tensor(dim**-0.5, dtype=torch.float64))

    @property
    def reads_input(self) -> bool:
        return self.space == "input"

    @classmethod
    def from_models(
        cls,
        gaussians: ClassGaussians,
        units: Sequence[int],
        space: str,
        variance_floor: float,
        log_prior: Mapping[int, float] | None = None,
    ) -> GaussianHead:
        """The block of ``units`` (fitted in ``gaussians``), with each class's optional log prior in its const."""
        terms = [gaussians.component_terms(u, variance_floor) for u in units]
        k = max(len(t["const"]) for t in terms)
        head = cls(len(units), k, gaussians.rank, gaussians.dim, space)
        means, proj, inv_var, const = [], [], [], []
        for unit, t in zip(units, terms, strict=True):
            pad = k - len(t["const"])
            prior = float((log_prior or {}).get(unit, 0.0))
            means.append(torch.cat([t["means"], t["means"][:1].expand(pad, -1)]))
            proj.append(torch.cat([t["proj"], t["proj"][:1].expand(pad, -1, -1)]))
            inv_var.append(torch.cat([t["inv_var"], t["inv_var"][:1].expand(pad)]))
            const.append(torch.cat([t["const"] + prior, torch.full((pad,), PAD_CONST, dtype=torch.float64)]))
        m32 = torch.cat(means).float()  # (C, D)
        p32 = torch.cat(proj).float()  # (C, rank, D)
        with torch.no_grad():
            head.means.copy_(m32)
            head.proj.copy_(p32.reshape(-1, gaussians.dim))
            # from the float32 values the forward pass uses, so the expanded square stays exact
            head.mean_sq.copy_(m32.double().square().sum(1))
            head.proj_mean.copy_((p32.double() @ m32.double()[:, :, None]).reshape(-1))
            head.inv_var.copy_(torch.cat(inv_var))
            head.const.copy_(torch.stack(const))
        return head

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor]) -> GaussianHead:
        """An empty block shaped like a saved one (``state``: its buffers, names without prefix); load it after."""
        units, k = state["const"].shape
        c, dim = state["means"].shape
        return cls(int(units), int(k), int(state["proj"].shape[0]) // int(c), int(dim),
                   "input" if int(state["space_input"]) else "features")  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1).double()
        b = z.shape[0]
        sq = z.square().sum(1, keepdim=True) - 2.0 * (z @ self.means.double().T) + self.mean_sq  # (B, C)
        low = (z @ self.proj.double().T - self.proj_mean).reshape(b, -1, self.rank).square().sum(-1)  # (B, C)
        comp = self.const.reshape(-1) - 0.5 * (sq * self.inv_var - low)
        return (torch.logsumexp(comp.reshape(b, self.out_features, self.components), dim=2) * self.scale).float()

    def extra_repr(self) -> str:
        return f"units={self.out_features}, components={self.components}, rank={self.rank}, dim={self.dim}, " \
               f"space={self.space}"  # fmt: skip


def onnx_nodes(
    head: GaussianHead, x: str, out: str, prefix: str, opset: int, raw_input: bool = False
) -> tuple[list[Any], list[Any]]:
    """ONNX nodes and initializers computing ``head`` from input ``x`` (B, D) float32 into ``out`` (B, units)
    float32, operation for operation as ``GaussianHead.forward`` does (float64 inside)."""
    # Long but one thing: the graph listed node by node, read against ``forward`` line by line; split, it hides that.
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def arr(name: str, value: Any) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(value), f"{prefix}.{name}")

    def n(name: str) -> str:
        return f"{prefix}.{name}"

    def reduce(op: str, src: str, axis: int, dst: str, keepdims: int) -> Any:
        if op == "ReduceSum" or opset >= 18:  # axes became an input (ReduceSum in opset 13, the rest in 18)
            return helper.make_node(op, [src, n(f"axes{axis}")], [dst], keepdims=keepdims)
        return helper.make_node(op, [src], [dst], axes=[axis], keepdims=keepdims)

    if head.reads_input and not raw_input:
        raise ValueError("a class-model block that reads the raw input cannot sit on a frozen backbone's features")
    c, r, u, k = head.means.shape[0], head.rank, head.out_features, head.components
    inits = [
        arr("meansT", head.means.detach().cpu().numpy().T),  # (D, C) float32
        arr("projT", head.proj.detach().cpu().numpy().T),  # (D, C * r) float32
        arr("mean_sq", head.mean_sq.detach().cpu().numpy()),
        arr("proj_mean", head.proj_mean.detach().cpu().numpy()),
        arr("inv_var", head.inv_var.detach().cpu().numpy()),
        arr("const", head.const.detach().cpu().numpy().reshape(-1)),
        arr("scale", head.scale.detach().cpu().numpy()),
        arr("minus2", np.array(-2.0)),
        arr("minus_half", np.array(-0.5)),
        arr("axes1", np.array([1], dtype=np.int64)),
        arr("axes2", np.array([2], dtype=np.int64)),
        arr("shape_r", np.array([0, c, r], dtype=np.int64)),
        arr("shape_k", np.array([0, u, k], dtype=np.int64)),
    ]
    double = TensorProto.DOUBLE
    nodes = [
        helper.make_node("Cast", [x], [n("z")], to=double),
        helper.make_node("Cast", [n("meansT")], [n("meansT64")], to=double),
        helper.make_node("Cast", [n("projT")], [n("projT64")], to=double),
        helper.make_node("Mul", [n("z"), n("z")], [n("z2")]),
        reduce("ReduceSum", n("z2"), 1, n("zz"), 1),  # (B, 1)
        helper.make_node("MatMul", [n("z"), n("meansT64")], [n("zm")]),  # (B, C)
        helper.make_node("Mul", [n("zm"), n("minus2")], [n("zm2")]),
        helper.make_node("Add", [n("zz"), n("zm2")], [n("sq0")]),
        helper.make_node("Add", [n("sq0"), n("mean_sq")], [n("sq")]),
        helper.make_node("MatMul", [n("z"), n("projT64")], [n("gz")]),  # (B, C * r)
        helper.make_node("Sub", [n("gz"), n("proj_mean")], [n("gd")]),
        helper.make_node("Reshape", [n("gd"), n("shape_r")], [n("gd3")]),
        helper.make_node("Mul", [n("gd3"), n("gd3")], [n("gd3sq")]),
        reduce("ReduceSum", n("gd3sq"), 2, n("low"), 0),  # (B, C)
        helper.make_node("Mul", [n("sq"), n("inv_var")], [n("sqv")]),
        helper.make_node("Sub", [n("sqv"), n("low")], [n("quad")]),
        helper.make_node("Mul", [n("quad"), n("minus_half")], [n("half")]),
        helper.make_node("Add", [n("const"), n("half")], [n("comp")]),
        helper.make_node("Reshape", [n("comp"), n("shape_k")], [n("comp3")]),  # (B, units, K)
        reduce("ReduceMax", n("comp3"), 2, n("top"), 1),  # logsumexp as torch computes it: max first
        helper.make_node("Sub", [n("comp3"), n("top")], [n("shifted")]),
        helper.make_node("Exp", [n("shifted")], [n("e")]),
        reduce("ReduceSum", n("e"), 2, n("esum"), 0),
        helper.make_node("Log", [n("esum")], [n("lse0")]),
        reduce("ReduceMax", n("comp3"), 2, n("top2"), 0),
        helper.make_node("Add", [n("lse0"), n("top2")], [n("lse")]),
        helper.make_node("Mul", [n("lse"), n("scale")], [n("scaled")]),
        helper.make_node("Cast", [n("scaled")], [out], to=TensorProto.FLOAT),
    ]
    return nodes, inits
