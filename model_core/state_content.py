"""A strategy's large state tensors as content stored once by sha256, outside the version's ``state.pt``.

``state.pt`` keeps the shape of every strategy's state (dicts, lists, numbers, strings, small tensors); each
tensor of at least ``LARGE`` bytes is replaced there by a placeholder ``{"engram.content": role}`` and written as
content, and the manifest's ``references`` lists it under that role (``state/<strategy>/<key>/...``) with its
sha256, size, dtype, shape and encoding. So:

- a tensor that did not change from the parent version (another strategy's state, EWC's anchors of older tasks,
  per-class statistics of old classes) has the same bytes, hence the same sha256, and is stored once;
- a square floating-point matrix that is symmetric up to a few entries (a Gram matrix, ``h.T @ h``: a BLAS
  product leaves a few hundred of its 1.6 million entries a rounding apart from their mirror) is stored as its
  upper triangle plus the lower entries that differ from their mirror: about half the bytes, rebuilt bit for bit.

Why not "the increment over the parent": the analytic head's Gram matrix grows by a dense ``h.T @ h`` each
task, as many bytes as the matrix itself, and the float64 difference of two versions' matrices does not
always add back to the child's bits; a low-rank form (the task's features) would rebuild it only up to the
rounding of one machine's BLAS. A version's state must rebuild exactly, on any machine.

Every content's bytes are a safetensors file (``encoding`` in its metadata), read with no pickle; a reader
checks them against the sha256 before use. No torch pickles, no folder of another version is ever read.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

LARGE = 1 << 16  # bytes: smaller tensors stay in state.pt (a reference costs ~200 bytes of manifest)
PLACEHOLDER = "engram.content"  # the key of a state.pt placeholder dict: {PLACEHOLDER: role}
KIND = "state-tensor"  # the references' kind
MAX_FIXES = 1 / 16  # a symmetric encoding is kept only when at most this share of lower entries differ

# a float dtype's bits as the integer of its width, to compare entries bit for bit
_INT_OF = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}  # fmt: skip
Put = Callable[[bytes], str]  # stores bytes as content, returns their sha256 (ArtifactStore.put_content)
Fetch = Callable[[str], bytes]  # the content's bytes by sha256


def encode(t: Tensor) -> tuple[bytes, str]:
    """(safetensors bytes, encoding): "symmetric" for a square float matrix mirrored but for a few entries,
    else "plain"."""
    t = t.detach().cpu().contiguous()
    if t.dim() == 2 and t.shape[0] == t.shape[1] > 1 and t.dtype in _INT_OF:
        n = t.shape[0]
        rows, cols = torch.triu_indices(n, n, offset=1)
        upper, lower = t[rows, cols], t[cols, rows]
        # bitwise comparison: -0.0 and 0.0, or two NaNs, are different bits
        differ = (upper.view(_INT_OF[t.dtype]) != lower.view(_INT_OF[t.dtype])).nonzero().flatten()
        if len(differ) <= MAX_FIXES * len(upper):
            iu, ju = torch.triu_indices(n, n)
            tensors = {"upper": t[iu, ju].contiguous(), "fix_at": differ.to(torch.int64), "fix": lower[differ].contiguous()}
            return st_save(tensors, metadata={"encoding": "symmetric", "n": str(n)}), "symmetric"
    return st_save({"t": t}, metadata={"encoding": "plain"}), "plain"


def decode(data: bytes) -> Tensor:
    """The tensor ``encode`` wrote, bit for bit."""
    tensors = st_load(data)
    if "t" in tensors:
        return tensors["t"]
    upper = tensors["upper"]
    # the side length from the triangle's size: n (n + 1) / 2 = len(upper)
    n = (math.isqrt(8 * len(upper) + 1) - 1) // 2
    if n * (n + 1) // 2 != len(upper):
        raise ValueError("a symmetric state tensor's triangle has no square size")
    out = torch.empty(n, n, dtype=upper.dtype)
    iu, ju = torch.triu_indices(n, n)
    out[iu, ju] = upper
    out[ju, iu] = upper
    rows, cols = torch.triu_indices(n, n, offset=1)
    fix_at = tensors["fix_at"]
    out[cols[fix_at], rows[fix_at]] = tensors["fix"]
    return out



def split_state(states: Mapping[str, Any], put: Put) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(``states`` with every large tensor replaced by a placeholder, the references of what ``put`` stored)."""
    refs: dict[str, dict[str, Any]] = {}

    def walk(value: Any, path: list[str]) -> Any:
        if isinstance(value, Tensor) and value.numel() * value.element_size() >= LARGE:
            role = "/".join(["state", *path])
            while role in refs:  # keys holding "/" could collide with a nested path
                role += "_"
            data, encoding = encode(value)
            refs[role] = {"sha256": put(data), "size": len(data), "kind": KIND, "encoding": encoding,
                          "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}  # fmt: skip
            return {PLACEHOLDER: role}
        if isinstance(value, Mapping):
            return {k: walk(v, [*path, str(k)]) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(walk(v, [*path, str(i)]) for i, v in enumerate(value))
        return value

    return walk(dict(states), []), refs


def join_state(skeleton: Mapping[str, Any], refs: Mapping[str, Mapping[str, Any]], fetch: Fetch) -> dict[str, Any]:
    """The states ``split_state`` split, each placeholder's tensor read through ``fetch`` and checked."""

    def walk(value: Any) -> Any:
        if isinstance(value, Mapping) and set(value) == {PLACEHOLDER}:
            role = str(value[PLACEHOLDER])
            ref = refs.get(role)
            if ref is None:
                raise ValueError(f"state.pt names content {role!r} that the manifest does not reference")
            data = fetch(str(ref["sha256"]))
            if hashlib.sha256(data).hexdigest() != ref["sha256"]:
                raise ValueError(f"state content {role!r} does not match its sha256 {ref['sha256']}")
            return decode(data)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(walk(v) for v in value)
        return value

    return dict(walk(skeleton))


def has_placeholders(value: Any) -> bool:
    """Whether a loaded ``state.pt`` names content (a bundle written with ``split_state``)."""
    if isinstance(value, Mapping):
        return set(value) == {PLACEHOLDER} or any(has_placeholders(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_placeholders(v) for v in value)
    return False
