"""ONNX graph helpers with no torch import, shared by the engine and the service (which serves without torch)."""

from __future__ import annotations

import io
from typing import Any

FEATURES = "features"  # a frozen backbone graph's output and a head graph's input


def compose(backbone: Any, head: Any) -> bytes:
    """One whole graph, input -> logits (and novelty), from a backbone graph and a head graph (onnx ModelProtos)
    joined on the features, with the head's metadata: what a version that references a shared backbone serves,
    as one file."""
    import onnx

    merged = onnx.compose.merge_models(backbone, head, io_map=[(FEATURES, FEATURES)])
    del merged.metadata_props[:]
    merged.metadata_props.extend(head.metadata_props)
    buf = io.BytesIO()
    onnx.save_model(merged, buf)
    return buf.getvalue()
