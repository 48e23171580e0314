"""Per-dimension standardisation of what the first trained layer reads, fitted once from a classifier's data.

Why: a gradient-trained layer is initialised and stepped (Adam, a fixed learning rate) for inputs of unit scale. Inputs
that are already features are not: sentence embeddings are unit vectors whose 384 values spread about 0.05 each around
a shared mean direction, a pretrained backbone's features have their own scale per dimension. A Linear layer on them
starts with logits near 0 and needs ~20 times the steps to grow its weights, so within a budget from the data it ends
short of a logistic regression (banking77, `joint` on the embeddings: 0.910 still improving at the 5,000-step cap,
against 0.920 when the inputs are standardised, logistic regression 0.922 on the same 80%).

The rule follows what the inputs are, not one data set: the layer that reads *features* (the Linear head blocks of a
frozen backbone, ``identity`` included) or *vectors* (the first layer of an ``mlp`` on vector input) reads them
standardised with the mean and spread of each dimension over the classifier's first gradient-trained job; pixel
images trained from scratch share one scale set by their preprocessing and are left as they are. The statistics are
fitted once and then kept (later jobs, replay and EWC's anchors all stay in one coordinate system); they are buffers of
the network, saved with each version and inside its ONNX graph (the MLP's) or folded into the head's Gemm weights
(``model_core.export_frozen``). A closed-form head (``analytic``, ``class_models``) never reads them.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A dimension whose spread is below this share of the mean spread (a constant feature) is divided by that floor
# instead, so it is neither amplified into noise nor a division by zero.
SCALE_FLOOR = 1e-3


@torch.no_grad()
def fit_standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) -> per-dimension (mean (D,), scale (D,)) in float32; the scale floored at SCALE_FLOOR x its mean."""
    x = x.double().flatten(1)
    mean = x.mean(0)
    scale = x.std(0, correction=0) if len(x) > 1 else torch.ones_like(mean)
    floor = max(float(scale.mean()) * SCALE_FLOOR, 1e-12)
    return mean.float(), scale.clamp_min(floor).float()


def is_fitted(mean: Tensor, scale: Tensor) -> bool:
    """False while the buffers are the no-op they start as (mean 0, scale 1)."""
    return bool(mean.abs().max() > 0) or bool((scale != 1).any())
