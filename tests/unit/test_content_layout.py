"""The pieces of content-stored versions: images kept as their 8-bit pixels read back to the decoder's float32
bits (service.jobs.suite), and strategy state tensors as content, symmetric ones as a triangle, rebuilt bit for
bit and stored once when unchanged (model_core.state_content)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_core.checkpoint import STATE, load_bundle, read_manifest, save_bundle
from model_core.config import InputSpec, Preprocessing
from model_core.data import SplitBenchmark
from model_core.learner import Learner
from model_core.state_content import decode, encode, join_state, split_state
from service.inference.inputs import InputFormat, decode_image
from service.jobs.suite import as_pixels, decode_segment, encode_segment
from service.storage.files import FileArtifactStore
from tests.conftest import FAST, digit_spec


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("resize", ["bilinear", "nearest"])
def test_decoded_photos_round_trip_through_their_pixels_bit_for_bit(resize: str) -> None:
    rng = np.random.default_rng(0)
    fmt = InputFormat(InputSpec("image", 3, 24, 20), Preprocessing(resize=resize))  # type: ignore[arg-type]
    photos = [rng.integers(0, 256, (31, 17, 3), dtype=np.uint8), rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)]
    x = np.stack([decode_image(encoded(p, f), fmt, 10**6) for p in photos for f in ("PNG", "JPEG")])
    labels = np.array(["a", "b", "a", "b"])
    data, encoding = encode_segment(x, labels, fmt.preprocessing.pixel_scale)
    assert encoding == "uint8" and len(data) < x.nbytes / 3
    back, back_labels = decode_segment(data)
    assert back.dtype == np.float32 and back.tobytes() == x.tobytes() and (back_labels == labels).all()


def test_what_is_not_8_bit_pixels_stays_float32() -> None:
    grey16 = InputFormat(InputSpec("image", 1, 8, 8))
    wide = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7  # 16-bit grey: values between 8-bit steps
    x16 = decode_image(encoded(wide), grey16, 10**6)[None]
    assert as_pixels(x16, 255.0) is None
    vectors = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    for x in (x16, vectors):
        data, encoding = encode_segment(x, np.array(["a"] * len(x)), 255.0)
        assert encoding == "float32" and decode_segment(data)[0].tobytes() == x.tobytes()
    assert encode_segment(vectors, np.array(["a"] * 5), None)[1] == "float32"
    # one sample off by a rounding: the whole segment stays float32, never an approximation
    x = np.full((2, 1, 2, 2), np.float32(3) / np.float32(255), dtype=np.float32)
    x[1, 0, 0, 0] = np.nextafter(x[1, 0, 0, 0], np.float32(1))
    assert as_pixels(x, 255.0) is None


def test_a_gram_matrix_is_stored_as_a_triangle_and_rebuilt_bit_for_bit() -> None:
    h = torch.randn(300, 257, dtype=torch.float32).double()
    gram = h.T @ h  # a BLAS product: a few entries differ from their mirror by a rounding
    data, encoding = encode(gram)
    assert encoding == "symmetric" and len(data) < 0.52 * gram.numel() * 8
    assert decode(data).view(torch.int64).equal(gram.view(torch.int64))
    other = torch.randn(40, 40)  # not symmetric: stored as it is
    assert encode(other)[1] == "plain" and decode(encode(other)[0]).equal(other)


def test_state_content_round_trip_and_a_bad_sha_is_refused() -> None:
    store: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        store[sha] = data
        return sha

    states = {"a": {"big": torch.randn(200, 100), "small": torch.ones(3), "n": 4, "list": [torch.zeros(20000)]}}
    skeleton, refs = split_state(states, put)
    assert set(refs) == {"state/a/big", "state/a/list/0"} and skeleton["a"]["small"].equal(torch.ones(3))
    back = join_state(skeleton, refs, store.__getitem__)
    assert back["a"]["big"].equal(states["a"]["big"]) and back["a"]["n"] == 4
    store[refs["state/a/big"]["sha256"]] = encode(torch.zeros(200, 100))[0]
    with pytest.raises(ValueError, match="does not match its sha256"):
        join_state(skeleton, refs, store.__getitem__)


def test_a_bundles_state_is_content_stored_once(digits: SplitBenchmark, tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "store")
    learner = Learner.create(digit_spec(), seed=0)
    for exp in digits.train[:2]:
        learner.learn(exp, "ewc", None, FAST)
    save_bundle(tmp_path / "old", learner)
    first = save_bundle(store.bundle_dir("c", "j1"), learner, put_content=store.put_content)
    content = sorted((store.root / "content" / "sha256").iterdir())
    assert first.references and all(r["kind"] == "state-tensor" for r in first.references.values())
    assert len(content) == len({r["sha256"] for r in first.references.values()})
    second = save_bundle(store.bundle_dir("c", "j2"), learner, put_content=store.put_content)
    assert sorted((store.root / "content" / "sha256").iterdir()) == content  # unchanged state: nothing added
    assert second.references == first.references
    assert (store.bundle_dir("c", "j2") / STATE).stat().st_size < (tmp_path / "old" / STATE).stat().st_size / 4
    loaded, manifest = load_bundle(store.bundle_dir("c", "j2"))  # the store's content folder, found from the bundle
    assert manifest.references == read_manifest(store.bundle_dir("c", "j2")).references
    want = load_bundle(tmp_path / "old")[0].strategy_states["ewc"]
    got = loaded.strategy_states["ewc"]
    assert got["mode"] == want["mode"] and len(got["fishers"]) == len(want["fishers"])
    for a, b in zip(got["fishers"] + got["anchors"], want["fishers"] + want["anchors"], strict=True):
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    (store.root / "content" / "sha256" / content[0].name).unlink()
    with pytest.raises(FileNotFoundError, match="content"):
        load_bundle(store.bundle_dir("c", "j2"))
