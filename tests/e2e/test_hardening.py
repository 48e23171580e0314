"""What a predict key, a careless client and a hostile body could do before issue 30, each through HTTP against a
real server: one test per finding. Each answer is a 4xx problem+json in the service's own words (or, where the
request was valid all along, a 200), and the server logs no traceback.

CPU: one server, one 8x8 image classifier and a few tiny vector jobs; the decoding test decodes about 200 MP of
PNG (a few seconds of one core)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import Server, auth, png_b64, start_server, stop_server, wait_job
from tests.e2e.support import blobs, create, learn, learn_starved, problem

pytestmark = pytest.mark.timeout(900)
SECRET = "hardening-audit-secret"
VEC = [0.0, 0.0, 0.0, 0.0]
BIG = 16_000_000  # the default per-image limit: one 4000x4000 image
BUDGET = 200_000_000  # this server's per-request pixel budget: twelve such images fit, thirteen do not


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A vector classifier "hv" and an 8x8 grey image classifier "hi" (eye vs flat), one version each."""
    env = {"ENGRAM_AUDIT_SECRET": SECRET, "ENGRAM_MAX_REQUEST_PIXELS": str(BUDGET), "OMP_NUM_THREADS": "1"}
    server = start_server(tmp_path_factory.mktemp("hardening") / "data", env)
    try:
        c = server.client()
        create(c, "hv")
        img = {"kind": "image", "channels": 1, "height": 8, "width": 8}
        assert c.post("/v1/classifiers", json={"name": "hi", "input": img, "backbone": "mlp"},
                      headers=auth("admin")).status_code == 201  # fmt: skip
        pictures = [{"label": "eye", "image_b64": png_b64(np.eye(8) * 16)}] * 6
        pictures += [{"label": "flat", "image_b64": png_b64(np.full((8, 8), 8.0))}] * 6
        jobs = [learn(c, "hv", {"task": "t1", "strategy": "naive", "samples": blobs({"x": 0, "y": 3}),
                                "options": {"iterations": 20}}),
                learn(c, "hi", {"task": "t1", "strategy": "naive", "samples": pictures, "options": {"iterations": 50}})]  # fmt: skip
        for job in jobs:
            assert wait_job(c, job, timeout=180)["status"] == "promoted"
        yield server
    finally:
        stop_server(server)


@pytest.fixture(autouse=True)
def no_traceback(srv: Server) -> Iterator[None]:
    yield
    log = srv.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:4000]


def png(width: int, height: int, mode: str = "L", value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), value).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict(c: httpx.Client, name: str, inputs: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return c.post(f"/v1/classifiers/{name}/predict", json={"inputs": inputs, **extra}, headers=auth("predict"),
                  timeout=300)  # fmt: skip


# --- 1. one predict key could stall a classifier for everyone -------------------------------------------------


def test_a_tiny_predict_does_not_wait_behind_a_heavy_image_request(srv: Server) -> None:
    """Twelve 16 MP colour PNGs (within this server's 200 MP budget) take the decoder seconds; a one-image predict
    sent while they decode is answered first. Before, both decoded in the version's one batch thread, in turn.
    Colour, not grey: three times the bytes to decode for the same pixels, so the heavy request still decodes
    well after the half second the tiny one waits (in grey, a fast CI host finished all twelve within it)."""
    c, heavy = srv.client(), [{"image_b64": b64(png(4000, 4000, "RGB"))}] * 12
    done: dict[str, float] = {}

    def send_heavy() -> None:
        with httpx.Client(base_url=srv.url, timeout=300) as own:
            r = predict(own, "hi", heavy)
        done["heavy"] = time.monotonic()
        assert r.status_code == 200, r.text

    thread = threading.Thread(target=send_heavy)
    thread.start()
    time.sleep(0.5)  # the heavy request is read and decoding
    assert "heavy" not in done, "the heavy request was answered before the tiny one was sent: it is not heavy enough"
    r = predict(c, "hi", [{"image_b64": png_b64(np.eye(8) * 16)}])
    done["tiny"] = time.monotonic()
    thread.join()
    assert r.status_code == 200, r.text
    assert done["tiny"] < done["heavy"], "the tiny predict was answered after the heavy one"


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(srv: Server) -> None:
    r = predict(srv.client(), "hi", [{"image_b64": b64(png(4000, 4000))}] * 13)  # 208 MP > 200 MP
    problem(r, 413, "208,000,000 pixels", "200,000,000")
    files = [("file", (f"{i}.png", png(4000, 4000), "image/png")) for i in range(13)]
    r = srv.client().post("/v1/classifiers/hi/predict/binary", files=files, headers=auth("predict"))
    problem(r, 413, "208,000,000 pixels")


# --- 2. answers of 500 with a stack trace ---------------------------------------------------------------------


def npy_header(shape: str) -> bytes:
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def test_npy_shapes_that_overflow_are_refused(srv: Server) -> None:
    for shape in ("(99999999999999999999, 16)", f"({2**62}, 4)", f"({2**32}, {2**32}, 16)", f"(0, {2**62})"):
        r = srv.client().post("/v1/classifiers/hv/predict/binary", content=npy_header(shape),
                              headers={**auth("predict"), "content-type": "application/x-npy"})  # fmt: skip
        problem(r, 400, ".npy")


def multipart(parts: list[tuple[str, bytes, str | None, str | None]]) -> tuple[bytes, str]:
    """(body, content type) of a form whose parts are (name, data, filename, part content type)."""
    boundary = "hardening-boundary"
    out = b""
    for name, data, filename, ctype in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += (f"Content-Type: {ctype}\r\n" if ctype else "").encode() + b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_text_that_does_not_decode_is_refused(srv: Server) -> None:
    c, image = srv.client(), png(8, 8)
    bad_parts = [("task", b"\xff\xfe", None, None), ("task", b"t", None, "text/plain; charset=no-such-charset")]
    for bad in bad_parts:
        body, ctype = multipart([bad, ("strategy", b"naive", None, None), ("file", image, "a.png", "image/png"),
                                 ("label", b"a", None, None)])  # fmt: skip
        r = c.post("/v1/classifiers/hi/learn", content=body, headers={**auth("learn"), "content-type": ctype})
        problem(r, 400, "charset")
        body, ctype = multipart([("file", bad[1], None, bad[3])])
        r = c.post("/v1/classifiers/hi/predict/binary", content=body, headers={**auth("predict"), "content-type": ctype})
        problem(r, 400, "charset")


def test_the_dashboard_refuses_a_version_number_out_of_range(srv: Server) -> None:
    for to in ("99999999999999999999999", "-1", "1e3"):
        r = srv.client().post("/ui/classifiers/hv/rollback", data={"key": "adm-secret-1", "to_version": to,
                              "reason": "r"}, follow_redirects=False)  # fmt: skip
        assert r.status_code == 303, r.text
        assert "to_version" in httpx.URL(r.headers["location"]).params["error"]


# --- 3. memory and CPU before any limit applied ---------------------------------------------------------------


def test_a_predict_body_is_refused_while_it_is_read(srv: Server) -> None:
    """A 4-value vector classifier's largest valid JSON predict is about 270 kB: a 3 MB body gets 413 from the
    size alone (before, it was parsed whole, then refused for its item count)."""
    c = srv.client()
    body = json.dumps({"inputs": [{"vector": [0.123456789] * 4}] * 50_000})
    r = c.post("/v1/classifiers/hv/predict", content=body, headers={**auth("predict"), "content-type": "application/json"})
    problem(r, 413, "request body is over", "1024 vectors of 4 values")
    rows = np.zeros((5000, 4), dtype=np.float64)
    buf = io.BytesIO()
    np.save(buf, rows)
    r = c.post("/v1/classifiers/hv/predict/binary", content=buf.getvalue(),
               headers={**auth("predict"), "content-type": "application/x-npy"})  # fmt: skip
    problem(r, 413, "request body is over")
    assert predict(c, "hv", [{"vector": [-1.2345678901234567e-300] * 4}] * 1024).status_code == 200  # the largest


def session_builds(srv: Server, name: str) -> float:
    text = srv.client().get("/metrics").text
    line = next((ln for ln in text.splitlines() if ln.startswith(f'engram_session_builds_total{{classifier="{name}"}}')), None)
    return 0.0 if line is None else float(line.split()[-1])


def test_pinned_versions_are_not_rebuilt_per_request(srv: Server) -> None:
    """Six versions of a small classifier, predicted pinned in turn three times: each session is built once
    (before, a cache of four versions rebuilt one per request)."""
    c = srv.client()
    create(c, "pins")
    for i in range(6):
        job = learn(c, "pins", {"task": f"t{i}", "strategy": "replay", "samples": blobs({f"c{i}": i, f"d{i}": -i - 1}),
                                "options": {"iterations": 5}})  # fmt: skip
        assert wait_job(c, job, timeout=120)["status"] in ("promoted", "rejected")
    for version in range(1, 7):
        assert predict(c, "pins", [{"vector": VEC}], version=version).status_code == 200
    before = session_builds(srv, "pins")
    for _ in range(2):
        for version in range(1, 7):
            r = predict(c, "pins", [{"vector": VEC}], version=version)
            assert r.status_code == 200 and r.json()["version"] == version, r.text
    assert session_builds(srv, "pins") == before


# --- 5. 16-bit images were clipped to white -------------------------------------------------------------------


def png16(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_images_are_scaled_not_clipped(srv: Server) -> None:
    """A flat 16-bit PNG predicts exactly as the same picture in 8 bits (value / 257); before, it was white."""
    c = srv.client()
    for value8 in (0, 128, 200):
        eight = predict(c, "hi", [{"image_b64": b64(png(8, 8, "L", value8))}], top_k=2).json()["predictions"]
        sixteen = predict(c, "hi", [{"image_b64": b64(png16(value8 * 257))}], top_k=2).json()["predictions"]
        assert sixteen == eight, (value8, sixteen, eight)
    white = predict(c, "hi", [{"image_b64": b64(png(8, 8, "L", 255))}], top_k=2).json()["predictions"]
    assert predict(c, "hi", [{"image_b64": b64(png16(128 * 257))}], top_k=2).json()["predictions"] != white


# --- 6. a strategy's minimum was checked after the 202 --------------------------------------------------------


def test_a_strategy_minimum_is_checked_before_the_job_is_queued(srv: Server) -> None:
    c = srv.client()
    create(c, "mins")
    samples = [{"label": f"class-{i}", "vector": [float(i), 0.0, 0.0, 1.0]} for i in range(300) for _ in range(2)]
    r = c.post("/v1/classifiers/mins/learn", json={"task": "t", "strategy": "class_models", "samples": samples},
               headers=auth("learn"))  # fmt: skip
    problem(r, 422, "at least 5", "'class-0' (1)", "and 295 more")
    assert len(r.text) < 2000
    assert c.get("/v1/classifiers/mins/versions", headers=auth("predict")).json() == []


# --- 7. limits that disagreed ---------------------------------------------------------------------------------


def test_forms_as_large_as_the_documented_limits_are_accepted(srv: Server) -> None:
    c, image = srv.client(), png(8, 8, "L", 100)
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(1024)]
    r = c.post("/v1/classifiers/hi/predict/binary", files=files, headers=auth("predict"))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1024, r.text[:500]
    r = c.post("/v1/classifiers/hi/predict/binary", files=[*files, files[0]], headers=auth("predict"))
    problem(r, 422, "1025 files", "1024")
    pairs: list[tuple[str, tuple[str | None, bytes | str, str | None]]] = []
    for i in range(600):
        pairs += [("file", (f"{i}.png", image if i % 2 else png(8, 8, "L", 0), "image/png")), ("label", (None, f"l{i % 2}", None))]
    r = c.post("/v1/classifiers/hi/learn", data={"task": "many", "strategy": "replay"}, files=pairs,
               headers=auth("learn"))  # fmt: skip
    assert r.status_code == 202, r.text[:500]
    c.post(f"/v1/jobs/{r.json()['job_id']}/cancel", headers=auth("learn"))


# --- 8. the smaller ones --------------------------------------------------------------------------------------


def test_the_audit_fingerprint_is_keyed_by_the_server_secret(srv: Server) -> None:
    c = srv.client()
    create(c, "audited")
    ended = []
    for i in range(2):
        job = learn(c, "audited", {"task": f"t{i}", "strategy": "replay", "samples": blobs({f"a{i}": i * 4, f"b{i}": -i * 4 - 2}),
                                   "options": {"iterations": 20}})  # fmt: skip
        ended.append(wait_job(c, job, timeout=120)["status"])
    if ended[1] == "promoted":  # an admin's pointer move either way: back to v1, or v2 forced in
        r = c.post("/v1/classifiers/audited/rollback", json={"to_version": 1, "reason": "  spaces around  "},
                   headers=auth("admin"))  # fmt: skip
    else:
        r = c.post("/v1/classifiers/audited/versions/2/promote", json={"force": True, "reason": "  spaces around  "},
                   headers=auth("admin"))  # fmt: skip
    assert r.status_code == 200, r.text
    last = c.get("/v1/classifiers/audited/audit", headers=auth("learn")).json()[-1]
    key = b"adm-secret-1"
    assert last["actor"] == "admin:" + hmac.new(SECRET.encode(), key, hashlib.sha256).hexdigest()[:16]
    assert hashlib.sha256(key).hexdigest()[:8] not in last["actor"]
    assert last["reason"] == "spaces around"


def test_reasons_are_trimmed_bounded_and_required_where_documented(srv: Server) -> None:
    c = srv.client()
    _, rejected = learn_starved(c, "forced")
    assert rejected["status"] == "rejected", rejected
    path = f"/v1/classifiers/forced/versions/{rejected['version']}/promote"
    problem(c.post(path, json={"force": True, "reason": " \t\n "}, headers=auth("admin")), 409, "a reason")
    ui = f"/ui/classifiers/forced/versions/{rejected['version']}/promote"
    for reason, words in (("", "reason"), ("   ", "reason"), ("r" * 2001, "2000")):
        r = c.post(ui, data={"key": "adm-secret-1", "force": "true", "reason": reason}, follow_redirects=False)
        assert r.status_code == 303 and words in httpx.URL(r.headers["location"]).params["error"], r.headers
        r = c.post("/ui/classifiers/forced/rollback", data={"key": "adm-secret-1", "reason": reason}, follow_redirects=False)
        assert r.status_code == 303 and words in httpx.URL(r.headers["location"]).params["error"], r.headers
    assert c.get("/v1/classifiers/forced", headers=auth("predict")).json()["active_version"] == 1
    assert len(c.get("/v1/classifiers/forced/audit", headers=auth("learn")).json()) == 1  # the first auto-promotion


def ico() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 100).save(buf, "ICO")
    return buf.getvalue()


def test_only_the_documented_image_formats_are_decoded_and_errors_are_ours(srv: Server) -> None:
    c = srv.client()
    for data, words in ((ico(), ("ICO images are not accepted", "PNG, JPEG, WebP, GIF, BMP or TIFF")),
                        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", ("PostScript/EPS",)),
                        (b"not an image at all", ("not a decodable image",)),
                        (png(8, 8)[:45], ("not a decodable image", "PNG"))):  # fmt: skip
        body = predict(c, "hi", [{"image_b64": b64(data)}]).json()
        assert body["status"] == 422 and all(w in body["detail"] for w in words), body
        assert "0x" not in body["detail"] and str(srv.data_dir) not in body["detail"], body
    for fmt in ("JPEG", "WEBP", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.new("L", (8, 8), 100).save(buf, fmt)
        assert predict(c, "hi", [{"image_b64": b64(buf.getvalue())}]).status_code == 200, fmt


def test_one_error_contract_on_every_route(srv: Server) -> None:
    c = srv.client()
    routes = [("predict", "/v1/classifiers/hv/predict"), ("learn", "/v1/classifiers/hv/learn"),
              ("admin", "/v1/classifiers")]  # fmt: skip
    for role, path in routes:
        for body in (b'{"inputs": [', b"\xff\xfe"):
            problem(c.post(path, content=body, headers={**auth(role), "content-type": "application/json"}), 400, "JSON")
        problem(c.post(path, content=b"", headers={**auth(role), "content-type": "application/json"}), 400, "empty")
    r = c.post("/v1/classifiers/hv/predict/binary", content=b"", headers={**auth("predict"), "content-type": "application/x-npy"})
    problem(r, 400, "empty")
    problem(predict(c, "hv", [{"vector": VEC, "colour": "red"}]), 422, "inputs[0]", "colour")
    sample = {"label": "x", "vector": VEC, "weight": 2}
    r = c.post("/v1/classifiers/hv/learn", json={"task": "t", "strategy": "naive", "samples": [sample] * 4},
               headers=auth("learn"))  # fmt: skip
    problem(r, 422, "samples[0]", "weight")
    image = png(8, 8)
    r = c.post("/v1/classifiers/hi/learn", data={"task": "t", "strategy": "naive", "colour": "red"},
               files=[("file", ("a.png", image, "image/png")), ("label", (None, "a", None))], headers=auth("learn"))  # fmt: skip
    problem(r, 422, "colour")
    r = c.post("/v1/classifiers/hi/predict/binary", data={"colour": "red"}, files=[("file", ("a.png", image, "image/png"))],
               headers=auth("predict"))  # fmt: skip
    problem(r, 422, "colour")


def test_the_dashboard_cannot_be_framed(srv: Server) -> None:
    for path in ("/ui", "/ui/classifiers/hv"):
        r = srv.client().get(path)
        assert r.status_code == 200
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_header_bomb_is_still_refused(srv: Server) -> None:
    """The size read from a header is checked before the budget sums it (a lie in IHDR is refused, not summed)."""
    data = bytearray(png(8, 8))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    problem(predict(srv.client(), "hi", [{"image_b64": b64(bytes(data))}]), 422, "inputs[0]")
