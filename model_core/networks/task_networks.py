"""Task-partitioned backbones for task-incremental learning: PackNet's weight owners and progressive columns.

Both keep every old task's function exactly, so each task's logits come from its own network: the forward pass
runs one network per task and concatenates each task's head block in unit order. The served graph has no task
input; serving picks the task's units from all of them, as for any task-incremental version. The structure is
plain tensors in the classifier's state dict (owner maps as uint8, columns as weights), so a bundle rebuilds
it from its keys (``restore_task_network``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_core.config import NetworkSpec
from model_core.networks.backbones import create_backbone

OWNER_PREFIX = "owner_"  # PackNet: one buffer per masked weight
COLUMNS_KEY = "n_columns"  # progressive: the number of columns beyond the backbone
MAX_TASKS = 254  # owners are uint8: 0 is free, task k is k + 1


def _body(backbone: nn.Module) -> nn.Sequential:
    """The backbone's layer sequence; PackNet masks its Linear and Conv2d weights one layer at a time."""
    body = getattr(backbone, "body", None)
    if not isinstance(body, nn.Sequential) or not any(isinstance(m, nn.Linear | nn.Conv2d) for m in body):
        raise ValueError("packnet masks the layers of the built-in 'mlp' and 'cnn' backbones; this backbone has "
                         "none it can mask (use progressive, or a frozen pretrained backbone)")  # fmt: skip
    return body


class PackNetOwners(nn.Module):
    """Which task owns each weight of the backbone's Linear and Conv2d layers: 0 free, task k as k + 1.

    Task k computes with the weights owned by tasks 0..k only; the biases belong to task 0 (Mallya & Lazebnik
    2018 fix them after the first task too). While a task trains, ``train_task`` makes the forward pass compute
    that task's network once and hand its features to every head block (the loss reads only its own units).
    """

    kind = "packnet"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        body = _body(backbone)
        self.layers = [i for i, m in enumerate(body) if isinstance(m, nn.Linear | nn.Conv2d)]
        for i in self.layers:
            weight = cast(nn.Linear, body[i]).weight
            self.register_buffer(f"{OWNER_PREFIX}{i}", torch.zeros(weight.shape, dtype=torch.uint8))
        self.train_task: int | None = None

    def owner(self, layer: int) -> Tensor:
        out: Tensor = getattr(self, f"{OWNER_PREFIX}{layer}")
        return out

    def weight_name(self, layer: int) -> str:
        return f"body.{layer}.weight"

    def task_features(self, backbone: nn.Module, x: Tensor, n_tasks: int) -> list[Tensor]:
        if self.training and self.train_task is not None:
            return [self._features(backbone, x, self.train_task)] * n_tasks
        return [self._features(backbone, x, t) for t in range(n_tasks)]

    def _features(self, backbone: nn.Module, x: Tensor, task: int) -> Tensor:
        for i, layer in enumerate(_body(backbone)):
            if i not in self.layers:
                x = layer(x)
                continue
            owner, weighted = self.owner(i), cast(nn.Linear | nn.Conv2d, layer)
            w = torch.where((owner > 0) & (owner <= task + 1), weighted.weight, torch.zeros_like(weighted.weight))
            if isinstance(weighted, nn.Linear):
                x = F.linear(x, w, weighted.bias)
            else:
                x = weighted._conv_forward(x, w, weighted.bias)
        return x


class ProgressiveColumns(nn.Module):
    """Columns beyond the backbone (task 0's column), each with a lateral map from every older column's features.

    Task k's features: column k's output plus a linear map of the concatenated features of columns 0..k-1
    (Rusu et al. 2016 connect every hidden layer; here the laterals join at the feature layer, which works for
    any backbone). A lateral starts at zero, so a new column starts as its own network.
    """

    kind = "progressive"
    n_columns: Tensor

    def __init__(self, spec: NetworkSpec, feature_dim: int, n_columns: int = 0) -> None:
        super().__init__()
        self.spec, self.feature_dim = spec, feature_dim
        self.columns = nn.ModuleList(create_backbone(spec, load_weights=False) for _ in range(n_columns))
        self.laterals = nn.ModuleList(nn.Linear((k + 1) * feature_dim, feature_dim, bias=False)
                                      for k in range(n_columns))  # fmt: skip
        self.register_buffer(COLUMNS_KEY, torch.tensor(n_columns))
        self.train_task: int | None = None

    def add_column(self, like: nn.Module, seed: int, copy_from: nn.Module | None = None) -> None:
        """Append a column, freshly initialised from ``seed`` (or a copy of ``copy_from``), on ``like``'s device."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            column = create_backbone(self.spec, load_weights=False)
        if copy_from is not None:
            column.load_state_dict(copy_from.state_dict())
        lateral = nn.Linear((len(self.columns) + 1) * self.feature_dim, self.feature_dim, bias=False)
        nn.init.zeros_(lateral.weight)
        ref = next(like.parameters())
        self.columns.append(column.to(ref.device, ref.dtype))
        self.laterals.append(lateral.to(ref.device, ref.dtype))
        self.n_columns = torch.tensor(len(self.columns))

    def task_features(self, backbone: nn.Module, x: Tensor, n_tasks: int) -> list[Tensor]:
        feats = [backbone(x)]
        for k in range(min(n_tasks - 1, len(self.columns))):
            feats.append(self.columns[k](x) + self.laterals[k](torch.cat(feats, dim=1)))
        return feats


TaskNetwork = PackNetOwners | ProgressiveColumns


def restore_task_network(spec: NetworkSpec, backbone: nn.Module, feature_dim: int,
                         state: Mapping[str, Tensor], prefix: str = "task_network.") -> TaskNetwork | None:  # fmt: skip
    """The task network a saved state dict holds (shaped to load it), or None when it holds none."""
    if f"{prefix}{COLUMNS_KEY}" in state:
        return ProgressiveColumns(spec, feature_dim, int(state[f"{prefix}{COLUMNS_KEY}"]))
    if any(k.startswith(f"{prefix}{OWNER_PREFIX}") for k in state):
        return PackNetOwners(backbone)
    return None
