"""The incremental classifier: backbone + one growing head (class-IL) or one head per task (task-IL)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from model_core.config import NetworkSpec, WeightsAccess
from model_core.networks.backbones import Normalize, create_backbone
from model_core.networks.gaussian_head import GaussianHead
from model_core.networks.random_features import ExpandedLinear, RandomFeatures, expansion_of
from model_core.networks.task_networks import TaskNetwork, restore_task_network


class HeadBlocks(nn.Module):
    """Head blocks over features whose outputs are concatenated into one logit vector.

    A block is a Linear layer, or a ``GaussianHead`` (per-class log-likelihoods, the ``class_models``
    strategy), which reads the flattened raw input instead of the features when its class models live there.
    """

    heads: nn.ModuleList

    @property
    def head_sizes(self) -> list[int]:
        return [int(cast(nn.Linear, h).out_features) for h in self.heads]

    @property
    def num_units(self) -> int:
        return sum(self.head_sizes)

    def forward_head(self, features: Tensor, inputs: Tensor | None = None) -> Tensor:
        """(B, feature_dim) -> (B, num_units) logits of every block, concatenated in unit order; ``inputs``
        (B, *input_shape) feeds the blocks that read the raw input."""
        if not self.heads:
            return features.new_zeros((features.shape[0], 0))
        outs = []
        linear_in = self.standardized(features)  # what the gradient-trained Linear blocks read
        expansion = expansion_of(self.heads)
        expanded = expansion(features) if expansion is not None else None  # (B, width), once for every block
        for head in self.heads:
            if isinstance(head, ExpandedLinear):
                if expanded is None:
                    raise ValueError("a random-feature head block without the classifier's expansion")
                outs.append(nn.functional.linear(expanded, head.weight, head.bias))
            elif isinstance(head, GaussianHead) and head.reads_input:
                if inputs is None:
                    raise ValueError("this head block reads the raw input; call the classifier on inputs")
                outs.append(head(inputs))
            elif isinstance(head, GaussianHead):
                outs.append(head(features))
            else:
                outs.append(head(linear_in))
        return torch.cat(outs, dim=1)

    def standardized(self, features: Tensor) -> Tensor:
        """(B, feature_dim) features as the plain Linear head blocks read them: standardised per dimension with the
        statistics fitted on the classifier's first gradient-trained job (``feature_mean``, ``feature_scale``; 0 and
        1, a no-op, until then). See ``model_core.networks.standardize``."""
        mean: Tensor | None = getattr(self, "feature_mean", None)
        scale: Tensor | None = getattr(self, "feature_scale", None)
        if mean is None or scale is None:
            return features
        return (features - mean.to(features.dtype)) / scale.to(features.dtype)

    def restore_heads(self, state: Mapping[str, Tensor]) -> None:
        """Make every head block the kind a saved state dict holds (a ``GaussianHead`` where its buffers are
        there, ``ExpandedLinear`` blocks where it holds a random-feature expansion; the network is rebuilt with
        Linear blocks), shaped to load that state."""
        width = next((v.shape[0] for k, v in state.items() if k.endswith(".expansion.weight")), None)
        for i in range(len(self.heads)):
            prefix = f"heads.{i}."
            if f"{prefix}expansion.weight" in state:
                dim = int(state[f"{prefix}expansion.weight"].shape[1])
                self.heads[i] = ExpandedLinear(int(width or 0), self.head_sizes[i], RandomFeatures(dim, int(width or 0)))
            elif width is not None and f"{prefix}const" not in state:  # every linear block reads the expansion
                self.heads[i] = ExpandedLinear(int(width), self.head_sizes[i])
            elif f"{prefix}const" in state:
                self.heads[i] = GaussianHead.from_state({k[len(prefix) :]: v for k, v in state.items()
                                                         if k.startswith(prefix)})  # fmt: skip


def _default_buffers(feature_dim: int, state: dict[str, Tensor], prefix: str, *_: object) -> None:
    """Versions saved before the calibration scale or the head's feature standardisation load them as no-ops."""
    state.setdefault(f"{prefix}logit_scale", torch.ones(()))
    state.setdefault(f"{prefix}feature_mean", torch.zeros(feature_dim))
    state.setdefault(f"{prefix}feature_scale", torch.ones(feature_dim))


class IncrementalClassifier(HeadBlocks):
    """Backbone plus linear head blocks whose outputs are concatenated into one logit vector.

    Output unit ``u`` of ``forward`` is one class. Every expansion appends a block of units, so existing
    units keep their weights and their logits are reproduced bit for bit (a wider matmul would use a
    different BLAS blocking and differ in the last bits). In class-incremental mode the blocks form one
    head (one softmax over all units); in task-incremental mode each block is one task's head, and the
    learner restricts softmax and prediction to it. ``head_sizes`` rebuilds a saved model.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        head_sizes: Sequence[int] = (),
        access: WeightsAccess | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.normalize = Normalize(spec)
        self.backbone = create_backbone(spec, access, load_weights)
        self.feature_dim: int = self.backbone.feature_dim
        self.heads = nn.ModuleList(nn.Linear(self.feature_dim, n) for n in head_sizes)
        # One network per task (packnet's owned weights, progressive columns), set by those strategies; None:
        # every task reads the backbone's features.
        self.task_network: TaskNetwork | None = None
        # 1 / the version's calibration temperature (model_core.calibration): served logits are forward's times
        # this; training never sees it. Versions saved before it existed load it as 1.
        self.register_buffer("logit_scale", torch.ones(()))
        # Per-dimension standardisation of the features the plain Linear head blocks read (fitted on the first
        # gradient-trained job of a frozen backbone's features; model_core.networks.standardize): (feature_dim,)
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_scale", torch.ones(self.feature_dim))
        self._register_load_state_dict_pre_hook(functools.partial(_default_buffers, self.feature_dim))  # type: ignore[no-untyped-call]

    def restore_heads(self, state: Mapping[str, Tensor]) -> None:
        """Head blocks, and the task network a saved state dict holds, shaped to load that state."""
        super().restore_heads(state)
        self.task_network = restore_task_network(self.spec, self.backbone, self.feature_dim, state)

    @property
    def frozen_backbone(self) -> bool:
        """True when no backbone parameter trains, so features can be computed once and cached.

        The backbone then also stays in eval mode (batch norm and dropout too) in ``train()``.
        """
        return not any(p.requires_grad for p in self.backbone.parameters())

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> (B, feature_dim)."""
        out: Tensor = self.backbone(self.normalize(x))
        return out

    logit_scale: Tensor
    feature_mean: Tensor
    feature_scale: Tensor

    def served(self, logits: Tensor) -> Tensor:
        """The logits as served: ``forward``'s times the calibration scale (their softmax is the served score)."""
        return logits * self.logit_scale.to(logits.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.task_network is None:
            return self.forward_head(self.forward_features(x), x)
        feats = self.task_network.task_features(self.backbone, self.normalize(x), len(self.heads))
        return torch.cat([head(f) for head, f in zip(self.heads, feats, strict=True)], dim=1)

    def expand_head(self, n_new: int, generator: torch.Generator | None = None) -> None:
        """Add ``n_new`` output units as a new block; existing units are untouched."""
        if n_new < 1:
            raise ValueError("expand_head needs n_new >= 1")
        ref = self.normalize.mean  # on the model's device (an ``identity`` backbone has no parameter)
        expansion = expansion_of(self.heads)
        if expansion is None:
            self.heads.append(_init_linear(self.feature_dim, n_new, generator).to(ref.device, ref.dtype))
            return
        block = ExpandedLinear(expansion.width, n_new)  # reads the random features, as the other blocks do
        block.load_state_dict(_init_linear(expansion.width, n_new, generator).state_dict(), strict=False)
        self.heads.append(block.to(ref.device, ref.dtype))


def copy_sharing_frozen(model: IncrementalClassifier) -> IncrementalClassifier:
    """A deep copy of ``model`` (a snapshot to restore, the previous model a strategy reads) that shares its
    backbone where the backbone is frozen: nothing that learns changes a frozen backbone, and copying one costs
    more than the rest of a closed-form job (EfficientNet-Lite0: ~300 tensors, 13 MB, copied twice a job)."""
    memo = {id(model.backbone): model.backbone} if model.frozen_backbone else {}
    return copy.deepcopy(model, memo)


def _init_linear(in_features: int, out_features: int, generator: torch.Generator | None) -> nn.Linear:
    """A Linear with PyTorch's default init, drawn from ``generator`` for reproducibility."""
    layer = nn.Linear(in_features, out_features)
    bound = 1.0 / in_features**0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def create_network(
    spec: NetworkSpec,
    head_sizes: Sequence[int] = (),
    access: WeightsAccess | None = None,
    load_weights: bool = True,
) -> IncrementalClassifier:
    """Build a classifier from its spec (and, when loading, its head sizes).

    A pretrained backbone loads its weights from the source its spec names (offline unless ``access``
    allows downloads); ``load_weights=False`` skips that when a saved state dict will replace them.
    """
    return IncrementalClassifier(spec, head_sizes, access, load_weights)
