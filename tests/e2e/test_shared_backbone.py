"""A frozen backbone stored once: photo versions written before shared backbones (a whole ``model.onnx`` each, no
references: the server started with ENGRAM_SHARED_BACKBONE=0 writes that layout) keep serving after the change,
and versions written after it hold only their head, their manifest naming the backbone's graph by sha256 in the
store's content area; two classifiers and both layouts serve side by side from one process, and the whole-graph
download of a head version computes what the service serves."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

from tests.e2e.conftest import Server, auth, start_server, stop_server, wait_job
from tests.e2e.support import learn

pytestmark = pytest.mark.timeout(1800)
CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-mini"
PHOTO = {"kind": "image", "channels": 3, "height": 32, "width": 32}


def photos(split: str, classes: tuple[str, ...], n: int) -> list[Path]:
    return [p for c in classes for p in sorted((CIFAR / split / c).iterdir())[:n]]


def body(classes: tuple[str, ...], task: str, n: int = 12) -> dict[str, object]:
    return {"task": task, "samples": [{"label": p.parent.name, "image_b64": base64.b64encode(p.read_bytes()).decode()}
                                      for p in photos("train", classes, n)]}  # fmt: skip


def predict(c: httpx.Client, name: str, files: list[Path], version: int | None = None) -> dict[str, object]:
    req: dict[str, object] = {"inputs": [{"image_b64": base64.b64encode(p.read_bytes()).decode()} for p in files],
                              "top_k": 1}  # fmt: skip
    if version is not None:
        req["version"] = version
    r = c.post(f"/v1/classifiers/{name}/predict", json=req, headers=auth("predict"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def bundle(data_dir: Path, c: httpx.Client, name: str, number: int) -> Path:
    v = c.get(f"/v1/classifiers/{name}/versions/{number}", headers=auth("learn")).json()
    job = v.get("job_id")
    found = [p for p in (data_dir / "artifacts" / "classifiers" / name).iterdir() if p.name == f"j-{job}"]
    assert len(found) == 1, (v, list((data_dir / "artifacts" / "classifiers" / name).iterdir()))
    return found[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"the cifar10-mini photos are not at {CIFAR}; this test needs them (see shared/data/README.md)")
    yield tmp_path_factory.mktemp("shared-backbone") / "data"


def test_old_layout_keeps_serving_and_new_versions_hold_no_backbone(data_dir: Path) -> None:
    old = start_server(data_dir, {"ENGRAM_SHARED_BACKBONE": "0", "ENGRAM_SHARED_CONTENT": "0"})  # the old layout
    try:
        c = old.client()
        r = c.post("/v1/classifiers", json={"name": "pets", "input": PHOTO}, headers=auth("admin"))
        assert r.status_code == 201, r.text
        # the first job exports the backbone graph (minutes on a loaded machine); later ones reuse it
        job = wait_job(c, learn(c, "pets", body(("airplane", "automobile"), "t1")), timeout=800)
        assert job["status"] == "promoted", job
        legacy = bundle(data_dir, c, "pets", 1)
        legacy_answer = predict(c, "pets", photos("test", ("airplane", "automobile"), 6))
    finally:
        stop_server(old)
    assert (legacy / "model.onnx").exists() and not (legacy / "head.onnx").exists()
    assert not json.loads((legacy / "manifest.json").read_text()).get("references")

    # int8 off: an int8 backbone graph would be content too (docs/guides/int8-backbone.md); this test counts the
    # fp32 backbone alone (tests/unit/test_int8_backbone.py covers the int8 reference)
    srv: Server = start_server(data_dir, {"ENGRAM_INT8_BACKBONE": "0"})
    try:
        c = srv.client()
        test = photos("test", ("airplane", "automobile"), 6)
        assert predict(c, "pets", test) == legacy_answer  # the old layout serves as it did
        job = wait_job(c, learn(c, "pets", body(("bird", "cat"), "t2")), timeout=600)  # from the old-layout parent
        assert job["status"] == "promoted", job
        r = c.post("/v1/classifiers", json={"name": "cars", "input": PHOTO}, headers=auth("admin"))
        assert r.status_code == 201, r.text
        job = wait_job(c, learn(c, "cars", body(("ship", "truck"), "t1")), timeout=600)
        assert job["status"] == "promoted", job

        shas = set()
        content_dir = data_dir / "artifacts" / "content" / "sha256"  # the backbone, evaluation samples, state
        pets2 = json.loads((bundle(data_dir, c, "pets", 2) / "manifest.json").read_text())
        backbone_file = content_dir / pets2["references"]["backbone"]["sha256"]
        weights = sorted(onnx.load(str(backbone_file)).graph.initializer, key=lambda t: -len(t.raw_data))
        largest = [numpy_helper.to_array(t).tobytes()[:4096] for t in weights[:3]]
        assert all(len(t) == 4096 for t in largest)
        for name, number in (("pets", 2), ("cars", 1)):
            folder = bundle(data_dir, c, name, number)
            manifest = json.loads((folder / "manifest.json").read_text())
            ref = manifest["references"]["backbone"]
            content = data_dir / "artifacts" / "content" / "sha256" / ref["sha256"]
            assert hashlib.sha256(content.read_bytes()).hexdigest() == ref["sha256"] and ref["size"] > 10_000_000
            assert not (folder / "model.onnx").exists() and (folder / "head.onnx").exists()
            own = {p.name: p.read_bytes() for p in folder.iterdir()}
            assert {n: hashlib.sha256(b).hexdigest() for n, b in own.items() if n != "manifest.json"} == manifest["files"]
            # no file of the version's own holds the backbone: none of its largest weights is in any of them
            for tensor in largest:
                assert not any(tensor in b for b in own.values()), (name, number)
            head = onnx.load_from_string(own["head.onnx"])
            assert [i.name for i in head.graph.input] == ["features"] and "Conv" not in {n.op_type for n in head.graph.node}
            shas.add(ref["sha256"])
        assert len(shas) == 1  # one backbone, stored once, for both classifiers
        # the only content the size of a backbone graph (the rest: evaluation samples, half a Gram matrix)
        assert [p.name for p in content_dir.iterdir() if p.stat().st_size > 10_000_000] == list(shas)

        new = predict(c, "pets", photos("test", ("airplane", "automobile", "bird", "cat"), 6))
        assert new["version"] == 2
        accuracy = np.mean([p["label"] == f.parent.name for p, f in
                            zip(new["predictions"], photos("test", ("airplane", "automobile", "bird", "cat"), 6),
                                strict=True)])  # type: ignore[call-overload]  # fmt: skip
        assert accuracy >= 0.6, new
        assert predict(c, "pets", test, version=1)["predictions"] == legacy_answer["predictions"]  # pinned, old layout
        cars = predict(c, "cars", photos("test", ("ship", "truck"), 4))
        assert cars["version"] == 1 and {p["label"] for p in cars["predictions"]} <= {"ship", "truck"}  # type: ignore[attr-defined]

        # the download is one whole graph (backbone + head) that computes what the service serves
        r = c.get("/v1/classifiers/pets/versions/2/model.onnx", headers=auth("learn"))
        assert r.status_code == 200 and len(r.content) > 10_000_000
        session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
        x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255 for p in test])
        logits = session.run(["logits"], {"input": x})[0]
        labels = json.loads(session.get_modelmeta().custom_metadata_map["engram.labels"])
        served = predict(c, "pets", test)["predictions"]
        assert [labels[i] for i in logits.argmax(1)] == [p["label"] for p in served]  # type: ignore[union-attr]
    finally:
        stop_server(srv)
