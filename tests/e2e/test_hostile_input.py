"""Hostile input beyond tests/e2e/test_errors_and_roles.py: image bombs, JSON nested 100,000 deep, wrong types,
broken encodings, unknown names and too-weak keys. Each gets a 4xx problem+json that says what is wrong, the
server stays healthy and logs no traceback, and nothing stored changes."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import sqlite3
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.http.limits import JSON_BYTES_PER_ITEM, JSON_BYTES_PER_VALUE, OVERHEAD_BYTES
from tests.e2e.conftest import Server, auth, png_b64, start_server, stop_server, wait_job
from tests.e2e.support import blobs, problem

pytestmark = pytest.mark.timeout(600)
MAX_PIXELS = 1_000_000
VEC = [0.0, 0.0, 0.0, 0.0]
JOB = "00000000-0000-4000-8000-000000000000"  # well formed, but no such job
# The largest JSON predict body "hv" (4 values, 1,024 inputs) can need (service.http.limits); larger ones get 413
PREDICT_BOUND = 1024 * (4 * JSON_BYTES_PER_VALUE + JSON_BYTES_PER_ITEM) + OVERHEAD_BYTES


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A vector, an 8x8 image and a task-incremental classifier, one promoted version each."""
    env = {"ENGRAM_MAX_IMAGE_PIXELS": str(MAX_PIXELS), "OMP_NUM_THREADS": "1"}  # one torch thread in the worker
    server = start_server(tmp_path_factory.mktemp("hostile") / "data", env)
    try:
        c = server.client()
        img = {"kind": "image", "channels": 1, "height": 8, "width": 8}
        for name, extra in (("hv", {"input": {"kind": "vector", "dim": 4}}), ("hi", {"input": img, "backbone": "mlp"}),
                            ("ht", {"input": {"kind": "vector", "dim": 4}, "scenario": "task-incremental"})):  # fmt: skip
            assert c.post("/v1/classifiers", json={"name": name, **extra}, headers=auth("admin")).status_code == 201
        pictures = [{"label": "eye", "image_b64": png_b64(np.eye(8) * 16)}] * 6
        pictures += [{"label": "flat", "image_b64": png_b64(np.full((8, 8), 8.0))}] * 6
        jobs = []
        for name, samples in (("hv", blobs({"x": 0, "y": 3})), ("hi", pictures), ("ht", blobs({"x": 0, "y": 3}))):
            body = {"task": "first", "strategy": "naive", "samples": samples, "options": {"iterations": 50}}
            r = c.post(f"/v1/classifiers/{name}/learn", json=body, headers=auth("learn"))
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        for job_id in jobs:
            assert wait_job(c, job_id, timeout=120)["status"] == "promoted"
        yield server
    finally:
        stop_server(server)


def snapshot(srv: Server) -> dict[str, Any]:
    """What the API says is stored, the files under the data directory, and row counts in every table."""
    c = srv.client()
    classifiers = c.get("/v1/classifiers", headers=auth("predict")).json()
    api: dict[str, Any] = {"classifiers": classifiers}
    for clf in classifiers:
        api[f"versions/{clf['name']}"] = c.get(
            f"/v1/classifiers/{clf['name']}/versions", headers=auth("predict")
        ).json()
        api[f"audit/{clf['name']}"] = c.get(f"/v1/classifiers/{clf['name']}/audit", headers=auth("learn")).json()
    files = {
        str(p.relative_to(srv.data_dir)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(srv.data_dir.rglob("*"))
        if not p.name.endswith(("-wal", "-shm", "-journal", ".log"))
    }
    with contextlib.closing(sqlite3.connect(f"file:{srv.data_dir / 'engram.db'}?mode=ro", uri=True)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        rows["jobs by status"] = sorted(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    return {"api": api, "files": files, "rows": rows}


def png(width: int, height: int, mode: str = "1") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


def header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """An 8x8 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed, so only the size is a lie)."""
    data = bytearray(png(8, 8, "L"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class Hostile:
    """Sends requests and checks each answer is the expected problem+json; counts the statuses."""

    def __init__(self, c: httpx.Client) -> None:
        self.c = c
        self.statuses: Counter[int] = Counter()

    def raw(self, method: str, path: str, body: bytes | str | None, role: str | None = "admin",
            ctype: str | None = "application/json", **kw: Any) -> httpx.Response:  # fmt: skip
        headers = {**(auth(role) if role else {}), **({"content-type": ctype} if ctype else {})}
        return self.c.request(method, path, content=body, headers={**headers, **kw.pop("headers", {})}, **kw)

    def json(self, method: str, path: str, body: Any, role: str | None = "admin") -> httpx.Response:
        return self.raw(method, path, json.dumps(body), role)

    def expect(self, r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
        self.statuses[r.status_code] += 1
        assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text[:500])
        if status == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.headers["content-type"].startswith("application/problem+json"), r.headers
        body = r.json()
        assert body["status"] == status and body["title"], body
        for w in words:
            assert w in body["detail"], (w, body)
        return body  # type: ignore[no-any-return]


def image_bombs(h: Hostile, srv: Server) -> None:
    ok = png_b64(np.eye(8) * 16)
    size_lie = base64.b64encode(header_bomb()).decode()
    huge = base64.b64encode(png(8000, 8000)).decode()  # 64 Mpx of zeros: ~10 kB compressed, 64 MB decoded
    just_over = base64.b64encode(png(1001, 1000, "L")).decode()
    peak = peak_rss_kib(srv.proc.pid)
    for b64, words in ((size_lie, ("too large", "pixels")), (huge, ("8000x8000 pixels",)), (just_over, ("pixels",))):
        start = time.monotonic()
        body = h.expect(h.json("POST", "/v1/classifiers/hi/predict", {"inputs": [{"image_b64": ok}] * 2 + [{"image_b64": b64}]},
                               "predict"), 422, "inputs[2]", *words)  # fmt: skip
        assert (body["field"], body["index"]) == ("inputs", 2)
        learn = {
            "task": "t",
            "strategy": "naive",
            "samples": [{"label": "a", "image_b64": ok}, {"label": "b", "image_b64": b64}],
        }
        h.expect(h.json("POST", "/v1/classifiers/hi/learn", learn, "learn"), 422, "samples[1]", *words)
        files = [("file", ("a.png", base64.b64decode(ok), "image/png")), ("label", (None, "a", None)),
                 ("file", ("bomb.png", base64.b64decode(b64), "image/png")), ("label", (None, "b", None))]  # fmt: skip
        r = h.c.post(
            "/v1/classifiers/hi/learn", headers=auth("learn"), data={"task": "t", "strategy": "naive"}, files=files
        )
        h.expect(r, 422, "samples[1]", *words)
        assert time.monotonic() - start < 10, "an image bomb took long to refuse"
    assert peak_rss_kib(srv.proc.pid) - peak < 32 * 1024, "refusing image bombs grew the server's peak memory"
    at_limit = base64.b64encode(png(1000, 1000, "L")).decode()  # exactly the limit: decoded and resized
    answer = h.expect(
        h.json("POST", "/v1/classifiers/hi/predict", {"inputs": [{"image_b64": at_limit}]}, "predict"), 200
    )
    assert answer["version"] == 1


def deep_json(h: Hostile) -> None:
    for n in (10_000, 100_000):
        lists, objects = "[" * n + "]" * n, '{"a":' * n + "1" + "}" * n
        for deep in (lists, objects):
            for path, role, status, wrap in (
                ("/v1/classifiers/hv/predict", "predict", 400, '{"inputs": %s}'),
                ("/v1/classifiers/hv/learn", "learn", 400, '{"task": "t", "strategy": "naive", "samples": %s}'),
                ("/v1/classifiers", "admin", 400, '{"name": "deep", "input": %s}'),
                ("/v1/classifiers/hv/versions/1/promote", "admin", 400, '{"reason": %s}'),
                ("/v1/classifiers/hv/rollback", "admin", 400, '{"to_version": %s}'),
            ):
                for body in (deep, wrap % deep):
                    if path.endswith("/predict") and len(body) > PREDICT_BOUND:  # refused while read, unparsed
                        h.expect(h.raw("POST", path, body, role), 413, "request body is over")
                    else:
                        h.expect(h.raw("POST", path, body, role), status, "JSON")
    # a few hundred levels decode; the schema or the strategy's parameter check refuses them
    mid = "[" * 500 + "]" * 500
    body = '{"inputs": [{"vector": ' + mid + "}]}"
    h.expect(h.raw("POST", "/v1/classifiers/hv/predict", body, "predict"), 422, "inputs[0]")
    body = (
        '{"task": "t", "strategy": "lwf", "params": {"alpha": ' + mid + '}, "samples": [{"label": "a", "vector": [0]}]}'
    )
    h.expect(h.raw("POST", "/v1/classifiers/hv/learn", body, "learn"), 422, "'alpha'")


def wrong_types(h: Hostile) -> None:
    P, L, C = "/v1/classifiers/hv/predict", "/v1/classifiers/hv/learn", "/v1/classifiers"
    ok = {"vector": VEC}
    predict = [
        ({"inputs": "abc"}, "inputs"), ({"inputs": 5}, "inputs"), ({"inputs": None}, "inputs"), ({"inputs": [1]}, "inputs.0"),
        ({"inputs": [ok], "top_k": "three"}, "top_k"), ({"inputs": [ok], "top_k": -1}, "top_k"), ({"inputs": [ok], "top_k": 0}, "top_k"),
        ({"inputs": [ok, ok, {"vector": ["a", 0, 0, 0]}]}, "inputs[2]"), ({"inputs": [{"vector": [True, 0, 0, 0]}]}, "inputs[0]"),
        ({"inputs": [{"vector": [[0], 0, 0, 0]}]}, "inputs[0]"), ({"inputs": [{"vector": {"a": 1}}]}, "inputs[0]"),
        ({"inputs": [{"vector": "0,0,0,0"}]}, "inputs[0]"), ({"inputs": [{"image_b64": "AAAA"}]}, "inputs[0]"),
        ({"inputs": [ok], "version": "one"}, "version"), ({"inputs": [ok], "version": 0}, "version"),
        ({"inputs": [ok], "task": 5}, "task"), ({"inputs": [ok], "bogus": 1}, "bogus"), ({"inputs": [ok], "top_k": 10**40}, "top_k"),
    ]  # fmt: skip
    for body, field in predict:
        h.expect(h.json("POST", P, body, "predict"), 422, field)
    for text, words in (('{"inputs": [{"vector": [NaN, 0, 0, 0]}]}', ("JSON",)), ('{"inputs": [{"vector": [Infinity, 0, 0, 0]}]}', ("JSON",)),
                        ('{"inputs": [{"vector": [1e999, 0, 0, 0]}]}', ("range",)), ('{"inputs": [], "top_k": 1' + "0" * 5000 + "}", ("range",))):  # fmt: skip
        h.expect(h.raw("POST", P, text, "predict"), 400, *words)
    sample = {"label": "a", "vector": VEC}
    base = {"task": "t", "strategy": "naive", "samples": [sample, sample]}
    learn = [
        ({**base, "samples": [sample, {"label": 5, "vector": VEC}]}, "samples[1]", "'label'"), ({**base, "samples": [{"label": None, "vector": VEC}]}, "samples[0]", "'label'"),
        ({**base, "samples": "x"}, "samples", ""), ({**base, "samples": None}, "samples", ""), ({**base, "samples": [5]}, "samples.0", ""),
        ({**base, "task": 5}, "task", ""), ({**base, "task": "bad name!"}, "task", ""), ({**base, "strategy": 5}, "strategy", ""),
        ({**base, "retention": "forever"}, "retention", ""), ({**base, "options": "fast"}, "options", ""),
        ({**base, "options": {"iterations": "many"}}, "options.iterations", ""), ({**base, "options": {"iterations": 10**9}}, "options.iterations", ""),
        ({**base, "options": {"lr": -1}}, "options.lr", ""), ({**base, "gate": {"tolerance": 2}}, "gate.tolerance", ""),
        ({**base, "eval_samples": [{"label": "a", "vector": "x"}]}, "eval_samples[0]", ""), ({**base, "bogus": 1}, "bogus", ""),
        ({**base, "strategy": "replay", "params": {"per_class": "many"}}, "'per_class'", "whole number"),
        ({**base, "strategy": "replay", "params": {"per_class": 2.5}}, "'per_class'", "whole number"),
        ({**base, "strategy": "replay", "params": {"selection": 7}}, "'selection'", "herding"),
        ({**base, "strategy": "ewc", "params": {"mode": "sideways"}}, "'mode'", "online"),
        ({**base, "strategy": "lwf", "params": {"temperature": 0}}, "'temperature'", "> 0"),
        ({**base, "strategy": "generative_replay", "params": {"hidden": -3}}, "'hidden'", ">= 1"),
        ({**base, "params": [1]}, "params", ""),
    ]  # fmt: skip
    for body, *words in learn:
        h.expect(h.json("POST", L, body, "learn"), 422, *words)
    vector = {"kind": "vector", "dim": 4}
    create = [
        ({"name": 5, "input": vector}, "name"), ({"name": "x" * 65, "input": vector}, "name"), ({"name": "q"}, "input"),
        ({"name": "q", "input": {"kind": "vector", "dim": "four"}}, "dim"), ({"name": "q", "input": {"kind": "vector", "dim": 0}}, "dim"),
        ({"name": "q", "input": {"kind": "vector", "dim": 10**6}}, "dim"), ({"name": "q", "input": {"kind": "audio"}}, "input"),
        ({"name": "q", "input": {"kind": "image", "height": 10**5, "width": 8}}, "height"),
        ({"name": "q", "input": vector, "scenario": "domain"}, "scenario"), ({"name": "q", "input": vector, "backbone": "vgg"}, "backbone"),
        ({"name": "q", "input": vector, "gate": {"tolerance": "x"}}, "gate.tolerance"), ({"name": "q", "input": vector, "gate": 1}, "gate"),
        ({"name": "q", "input": {"kind": "vector", "dim": 4}, "backbone": "cnn"}, "backbone"),
    ]  # fmt: skip
    for body, field in create:
        h.expect(h.json("POST", C, body), 422, field)
    h.expect(h.json("POST", C, {"name": "hv", "input": vector}), 409, "already exists")
    promote, rollback = "/v1/classifiers/hv/versions/1/promote", "/v1/classifiers/hv/rollback"
    for body, field in (
        ({"force": [1]}, "force"),
        ({"reason": 5}, "reason"),
        ({"reason": "r" * 3000}, "reason"),
        ({"bogus": 1}, "bogus"),
        ("yes", ""),
    ):
        h.expect(h.json("POST", promote, body), 422, field)
    for body, field in (
        ({"to_version": "x"}, "to_version"),
        ({"to_version": 0}, "to_version"),
        ({"to_version": 1.5}, "to_version"),
    ):
        h.expect(h.json("POST", rollback, body), 422, field)
    h.expect(h.json("POST", promote, {}), 409, "already active")
    h.expect(h.json("POST", rollback, {"to_version": 1}), 409, "already active")


def broken_bodies(h: Hostile) -> None:
    P, L, C = "/v1/classifiers/hv/predict", "/v1/classifiers/hv/learn", "/v1/classifiers"
    h.expect(h.raw("POST", P, b"", "predict"), 400, "empty")  # no body at all: the same answer on every route
    h.expect(h.raw("POST", C, b""), 400, "empty")
    h.expect(h.raw("POST", L, b"", "learn"), 400, "empty")
    h.expect(h.raw("POST", P, b"null", "predict"), 422, "PredictRequest")
    for body in (
        b"\xff\xfe\xfd",
        b'{"inputs": "\xff\xfe"}',
        b'{"inputs": [{"vector": [0, 0, 0, 0]}], "task": "\xc3\x28"}',
    ):
        h.expect(h.raw("POST", P, body, "predict"), 400, "JSON")
        h.expect(h.raw("POST", L, body, "learn"), 400, "JSON")
    h.expect(h.raw("POST", C, b'{"name": "\xc3\x28", "input": {"kind": "vector", "dim": 4}}'), 400, "UTF-8")
    h.expect(h.raw("POST", C, b'{"name": "q", "input": {"kind": "vector", "dim": 4}}\xff'), 400, "JSON")
    h.expect(h.raw("POST", P, b'{"inputs": [{"vector": [0, 0, 0, 0]}]', "predict"), 400, "truncated")
    lone_surrogate = '{"inputs": [{"vector": [0, 0, 0, 0]}], "task": "\\ud800"}'
    h.expect(h.raw("POST", P, lone_surrogate, "predict"), 400)
    # not JSON at all, under a non-JSON content type
    h.expect(
        h.raw("POST", P, b"inputs=1&top_k=2", "predict", "application/x-www-form-urlencoded"), 415, "application/json"
    )
    h.expect(h.raw("POST", P, b"hello", "predict", "text/plain"), 415, "application/json")
    h.expect(h.raw("POST", C, b"<classifier name='q'/>", "admin", "application/xml"), 415, "application/json")
    h.expect(h.raw("POST", L, json.dumps({"task": "t", "strategy": "naive", "samples": []}), "learn", "text/plain"),
             415, "multipart/form-data")  # fmt: skip
    r = h.c.post(P, headers=auth("predict"), files=[("file", ("a.png", b"\x89PNG", "image/png"))])
    h.expect(r, 415, "application/json")
    r = h.c.post(L, headers=auth("learn"), data={"task": "t", "strategy": "naive", "label": ["a", "b"]},
                 files=[("file", ("a.png", base64.b64decode(png_b64(np.eye(8))), "image/png"))])  # fmt: skip
    h.expect(r, 422, "1 files but 2 labels")


def unknown_names(h: Hostile) -> None:
    predict = {"inputs": [{"vector": VEC}]}
    learn = {"task": "t", "strategy": "naive", "samples": [{"label": "a", "vector": VEC}] * 2}
    for method, path, role, body in (
        ("POST", "/v1/classifiers/nope/predict", "predict", predict), ("POST", "/v1/classifiers/nope/learn", "learn", learn),
        ("GET", "/v1/classifiers/nope", "predict", None), ("GET", "/v1/classifiers/nope/versions", "predict", None),
        ("GET", "/v1/classifiers/nope/versions/1", "predict", None), ("GET", "/v1/classifiers/nope/versions/1/model.onnx", "learn", None),
        ("GET", "/v1/classifiers/nope/audit", "learn", None), ("POST", "/v1/classifiers/nope/versions/1/promote", "admin", {}),
        ("POST", "/v1/classifiers/nope/rollback", "admin", {"to_version": 1}),
    ):  # fmt: skip
        h.expect(h.raw(method, path, None if body is None else json.dumps(body), role), 404, "'nope'")
    for method, path, role, body in (
        ("POST", "/v1/classifiers/hv/predict", "predict", {**predict, "version": 999}), ("GET", "/v1/classifiers/hv/versions/999", "predict", None),
        ("GET", "/v1/classifiers/hv/versions/999/model.onnx", "learn", None), ("POST", "/v1/classifiers/hv/versions/999/promote", "admin", {}),
        ("POST", "/v1/classifiers/hv/rollback", "admin", {"to_version": 999}),
    ):  # fmt: skip
        h.expect(h.raw(method, path, None if body is None else json.dumps(body), role), 404, "no version 999")
    for job, words in ((JOB, ("no job",)), ("nope", ("no job",)), ("..%2F..%2Fengram.db", ())):
        h.expect(h.raw("GET", f"/v1/jobs/{job}", None, "learn"), 404, *words)
        h.expect(h.raw("POST", f"/v1/jobs/{job}/cancel", None, "learn"), 404, *words)
        h.expect(h.raw("GET", f"/v1/jobs/{job}/events", None, "learn"), 404, *words)
    h.expect(h.json("POST", "/v1/classifiers/ht/predict", {**predict, "task": ""}, "predict"), 422, "unknown task ''")
    h.expect(
        h.json("POST", "/v1/classifiers/ht/predict", {**predict, "task": "first", "version": 999}, "predict"),
        404,
        "999",
    )


def weak_keys(h: Hostile) -> None:
    """Each endpoint kind without a key (401) and with the next weaker role (403); what
    test_roles_are_enforced already checks is left out."""
    endpoints = [
        ("GET", "/v1/strategies", "predict"), ("GET", "/v1/classifiers/hv", "predict"), ("GET", "/v1/classifiers/hv/versions", "predict"),
        ("GET", "/v1/classifiers/hv/versions/1", "predict"), ("POST", "/v1/classifiers/hv/predict", "predict"),
        ("POST", "/v1/classifiers/hv/learn", "learn"), ("GET", f"/v1/jobs/{JOB}", "learn"), ("POST", f"/v1/jobs/{JOB}/cancel", "learn"),
        ("GET", f"/v1/jobs/{JOB}/events", "learn"), ("GET", "/v1/classifiers/hv/audit", "learn"),
        ("GET", "/v1/classifiers/hv/versions/1/model.onnx", "learn"), ("POST", "/v1/classifiers/hv/versions/1/promote", "admin"),
        ("POST", "/v1/classifiers/hv/rollback", "admin"), ("POST", "/v1/classifiers", "admin"),
    ]  # fmt: skip
    deep = "[" * 100_000 + "]" * 100_000  # the key is checked before the body is read
    for method, path, needed in endpoints:
        body = deep if method == "POST" else None
        h.expect(h.raw(method, path, body, None), 401, "Bearer")
        for scheme in ("Basic YWRtaW46YWRtaW4=", "Bearer", "Token adm-secret-1", "Bearer adm-secret-1x"):
            h.expect(h.raw(method, path, body, None, headers={"Authorization": scheme}), 401)
        h.expect(h.raw(method, path, body, None, headers={"Authorization": b"Bearer \xff\xfe"}), 401, "unknown")
        weaker = {"learn": "predict", "admin": "learn"}.get(needed)
        if weaker:
            h.expect(h.raw(method, path, body, weaker), 403, f"needs '{needed}'")
        if needed == "admin":
            h.expect(h.raw(method, path, body, "predict"), 403, f"needs '{needed}'")


def test_hostile_requests_get_a_4xx_and_change_nothing(srv: Server) -> None:
    c = srv.client()
    before = snapshot(srv)
    h = Hostile(c)
    image_bombs(h, srv)
    deep_json(h)
    wrong_types(h)
    broken_bodies(h)
    unknown_names(h)
    weak_keys(h)
    assert c.get("/healthz").status_code == 200
    r = c.post("/v1/classifiers/hv/predict", json={"inputs": [{"vector": VEC}]}, headers=auth("predict"))
    assert r.status_code == 200
    assert snapshot(srv) == before
    log = srv.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.find("Traceback") - 2000 :][:6000]
    assert not re.search(r'"status": 5\d\d', log)
    sent = sum(h.statuses.values())
    print(f"hostile input: {sent} requests; " + ", ".join(f"{s}: {n}" for s, n in sorted(h.statuses.items())))
    assert not any(s >= 500 for s in h.statuses)


def test_a_label_numpy_would_truncate_is_refused(srv: Server) -> None:
    """np.array(..., dtype=str) drops trailing NUL characters: "a\\x00" would be trained as "a" and "\\x00" as ""
    (an empty label), silently. Labels with control characters are refused."""
    c = srv.client()
    samples = [{"label": "a\x00", "vector": VEC}] * 3 + [{"label": "\x00", "vector": [3.0] * 4}] * 3
    r = c.post("/v1/classifiers/hv/learn", json={"task": "nul", "strategy": "naive", "samples": samples},
               headers=auth("learn"))  # fmt: skip
    assert r.status_code == 422 and "samples[0]" in r.json()["detail"], r.text
    assert "control characters" in r.json()["detail"]


def test_json_routes_refuse_a_non_json_content_type(srv: Server) -> None:
    """A JSON body sent as text/plain or a urlencoded form is refused with 415 naming what to send, on every
    POST route (learn also takes multipart/form-data); a POST with no body at all is still fine."""
    c = srv.client()
    routes = [("predict", "/v1/classifiers/hv/predict", {"inputs": [{"vector": VEC}]}),
              ("admin", "/v1/classifiers", {"name": "ctype", "input": {"kind": "vector", "dim": 4}}),
              ("learn", "/v1/classifiers/hv/learn", {"task": "t", "strategy": "naive", "samples": []}),
              ("admin", "/v1/classifiers/hv/rollback", {}),
              ("admin", "/v1/classifiers/hv/versions/1/promote", {})]  # fmt: skip
    for role, path, body in routes:
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            r = c.post(path, content=json.dumps(body), headers={**auth(role), "content-type": ctype})
            problem(r, 415, "application/json")
    assert c.get("/v1/classifiers/ctype", headers=auth("predict")).status_code == 404  # nothing was created
    r = c.post("/v1/classifiers/nope/rollback", headers=auth("admin"))  # no body, no content type: read on
    assert r.status_code == 404, r.text
