"""POST .../predict/binary: an .npy array or raw image files give exactly the JSON path's predictions, and
every body it cannot use gets a 4xx problem+json naming what was wrong.

Cost: one server, one 50-step MLP job on 8x8 digits (about 10-15 s on 2 cores, most of it the worker's
start), then a few dozen requests.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from service.client import EngramClient
from tests.e2e.conftest import KEYS, Server, auth, png_b64, start_server, stop_server, wait_job

pytestmark = pytest.mark.timeout(300)
P = "/v1/classifiers/bin/predict"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, np.ndarray]]:
    """A server with classifier 'bin' (8x8 grey, digits 0-2) and vector classifier 'vec', and 40 digit
    images as the uint8 pixels a PNG carries, (40, 8, 8)."""
    srv = start_server(tmp_path_factory.mktemp("engram") / "data")
    c = srv.client()
    d = load_digits()
    pick = d.target < 3
    x, y = d.images[pick], d.target[pick]
    r = c.post("/v1/classifiers", headers=auth("admin"), json={
        "name": "bin", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}, "backbone": "mlp"})  # fmt: skip
    assert r.status_code == 201, r.text
    body = {"task": "t", "strategy": "naive", "options": {"iterations": 50},
            "samples": [{"label": str(int(t)), "image_b64": png_b64(img)} for img, t in zip(x[:90], y[:90], strict=True)]}  # fmt: skip
    r = c.post("/v1/classifiers/bin/learn", json=body, headers=auth("learn"))
    assert r.status_code == 202, r.text
    assert wait_job(c, r.json()["job_id"])["status"] == "promoted"
    r = c.post("/v1/classifiers", headers=auth("admin"), json={"name": "vec", "input": {"kind": "vector", "dim": 4}})
    assert r.status_code == 201, r.text
    pixels = np.round(x[90:130] * 255 / 16).astype(np.uint8)  # exactly what png_b64 encodes
    yield srv, pixels
    stop_server(srv)


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def post_npy(c: httpx.Client, body: bytes, path: str = P + "/binary", ctype: str = "application/x-npy",
             **params: Any) -> httpx.Response:  # fmt: skip
    return c.post(path, content=body, headers={**auth("predict"), "content-type": ctype}, params=params)


def problem(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    for w in words:
        assert w in r.json()["detail"], (w, r.json())


def test_binary_bodies_give_the_json_predictions(trained: tuple[Server, np.ndarray]) -> None:
    srv, pixels = trained
    c = srv.client()
    pngs = [base64.b64decode(png_b64(img / 255 * 16)) for img in pixels]
    assert all(np.array_equal(np.asarray(Image.open(io.BytesIO(b))), p) for b, p in zip(pngs, pixels, strict=True))
    r = c.post(P, json={"inputs": [{"image_b64": base64.b64encode(b).decode()} for b in pngs], "top_k": 3},
               headers=auth("predict"))  # fmt: skip
    assert r.status_code == 200, r.text
    expected = r.json()
    assert expected["version"] == 1 and len(expected["predictions"]) == len(pngs)
    assert len({p["label"] for p in expected["predictions"]}) > 1  # a model that answers one label proves little

    rows = pixels[:, None]  # (N, 1, 8, 8): the classifier's declared shape
    answers = {
        "npy uint8": post_npy(c, npy(rows), top_k=3),
        "npy float32": post_npy(c, npy(rows.astype(np.float32) / 255), top_k=3),
        "npy float64, fortran order": post_npy(c, npy(np.asfortranarray(rows / 255.0)), top_k=3),
        "octet-stream": post_npy(c, npy(rows), ctype="application/octet-stream", top_k=3),
        "multipart": c.post(P + "/binary", headers=auth("predict"), params={"top_k": 3},
                            files=[("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]),
    }  # fmt: skip
    for how, got in answers.items():
        assert got.status_code == 200, (how, got.text)
        assert got.json() == expected, how

    with EngramClient(srv.url, key=KEYS["predict"]) as client:
        assert client.predict_array("bin", rows, top_k=3).model_dump() == expected
        assert client.predict_images("bin", pngs, top_k=3).model_dump() == expected
        assert client.predict_array("bin", rows[:2], version=1).version == 1


def test_binary_bodies_it_cannot_use_get_clear_4xx(trained: tuple[Server, np.ndarray]) -> None:
    srv, pixels = trained
    c = srv.client()
    rows = pixels[:, None]
    good = npy(rows[:2])
    problem(post_npy(c, npy(pixels)), 422, "shape (40, 8, 8)", "(N, 1, 8, 8)")  # channel axis missing
    problem(post_npy(c, npy(rows.astype(np.int64))), 422, "dtype is int64", "uint8")
    problem(post_npy(c, npy(np.array([["a"] * 64]).reshape(1, 1, 8, 8))), 422, "dtype is <U1")
    problem(post_npy(c, npy(np.zeros(3, np.float32))), 422, "shape (3,)", "(N, *input shape)")
    problem(post_npy(c, npy(np.zeros((0, 1, 8, 8), np.float32))), 422, "no rows")
    nan = rows[:3].astype(np.float32) / 255
    nan[2, 0, 4, 4] = np.nan
    r = post_npy(c, npy(nan))
    problem(r, 422, "inputs[2]", "non-finite")
    assert r.json()["index"] == 2
    problem(post_npy(c, b"\x89PNG\r\n\x1a\n" + b"\0" * 40), 400, ".npy file")  # an image sent as .npy
    problem(post_npy(c, good[:-5]), 400, "needs 128 bytes")  # truncated
    problem(post_npy(c, good[:8] + b"\x02\x00{'descr': '<f4'}"), 400, "header is malformed")
    problem(post_npy(c, good[:8] + (60_000).to_bytes(2, "little") + good[10:]), 400, "header is 60000 bytes")
    problem(post_npy(c, good.replace(b"'|u1'", b"'|O8'")), 422, "not numeric")  # object arrays are pickles
    problem(post_npy(c, good, top_k=0), 422, "top_k")
    problem(post_npy(c, good, version=999), 404, "999")
    problem(post_npy(c, good, path="/v1/classifiers/nope/predict/binary"), 404, "nope")
    problem(post_npy(c, good, ctype="text/plain"), 415, "application/x-npy")
    problem(post_npy(c, good, ctype="application/json"), 415, "multipart/form-data")
    problem(post_npy(c, npy(np.zeros((2, 4), np.float32)), path="/v1/classifiers/vec/predict/binary"), 409,
            "no active version")  # fmt: skip

    files = [("file", ("a.png", base64.b64decode(png_b64(np.eye(8))), "image/png")),
             ("file", ("b.png", b"\x89PNG broken", "image/png"))]  # fmt: skip
    r = c.post(P + "/binary", headers=auth("predict"), files=files)
    problem(r, 422, "file[1]", "not a decodable image")
    assert (r.json()["field"], r.json()["index"]) == ("file", 1)
    problem(c.post(P + "/binary", headers=auth("predict"), files=[("file", (None, b"not a file"))]),
            422, "'file' part must be a file")  # fmt: skip
    problem(c.post(P + "/binary", headers=auth("predict"), files=[files[0], ("other", ("x", b"1"))]),
            422, "unknown field(s) ['other']")  # fmt: skip
    problem(c.post(P + "/binary", headers=auth("predict"), files=[("other", ("x", b"1"))]), 422, "no 'file' part")
    r = c.post(P + "/binary", content=good, headers={"content-type": "application/x-npy"})
    assert r.status_code == 401, r.text
    # the server is still well: a good body still answers
    assert post_npy(c, good).status_code == 200


def test_openapi_documents_the_binary_bodies(trained: tuple[Server, np.ndarray]) -> None:
    srv, _ = trained
    doc = srv.client().get("/schema/openapi.json").json()
    op = doc["paths"]["/v1/classifiers/{name}/predict/binary"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/x-npy", "application/octet-stream", "multipart/form-data"}
    assert {p["name"] for p in op["parameters"]} >= {"top_k", "task", "version"}
    assert {"200", "400", "401", "404", "409", "413", "415", "422"} <= set(op["responses"])
