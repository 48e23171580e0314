"""Roles and bad input: each gets a clear problem+json 4xx, and nothing stored changes."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.e2e.conftest import Server, auth, png_b64, wait_job
from tests.e2e.support import problem

pytestmark = pytest.mark.timeout(600)
VEC = {"name": "vec", "input": {"kind": "vector", "dim": 4}}
TIL = {"name": "til", "input": {"kind": "vector", "dim": 4}, "scenario": "task-incremental"}


def vectors(n: int, label: str, offset: float) -> list[dict[str, object]]:
    rng = np.random.default_rng(int(offset * 10))
    return [{"label": label, "vector": (rng.normal(size=4) * 0.1 + offset).tolist()} for _ in range(n)]


def test_roles_are_enforced(server: Server) -> None:
    c = server.client()
    problem(c.get("/v1/classifiers"), 401, "Bearer")
    problem(c.get("/v1/classifiers", headers={"Authorization": "Bearer wrong"}), 401, "unknown")
    problem(c.post("/v1/classifiers", json=VEC, headers=auth("learn")), 403, "admin")
    assert c.post("/v1/classifiers", json=VEC, headers=auth("admin")).status_code == 201
    body = {"task": "a", "strategy": "naive", "samples": vectors(4, "x", 0) + vectors(4, "y", 3)}
    problem(c.post("/v1/classifiers/vec/learn", json=body, headers=auth("predict")), 403, "learn")
    problem(c.post("/v1/classifiers/vec/rollback", json={}, headers=auth("learn")), 403, "admin")
    assert c.get("/v1/classifiers", headers=auth("predict")).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
    assert c.get("/schema/openapi.json").status_code == 200


def test_bad_inputs_get_the_right_4xx(server: Server) -> None:
    c = server.client()
    c.post("/v1/classifiers", json=VEC, headers=auth("admin"))
    c.post("/v1/classifiers", json=TIL, headers=auth("admin"))
    c.post("/v1/classifiers", headers=auth("admin"),
           json={"name": "img", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}})  # fmt: skip
    learn = lambda name, body: c.post(f"/v1/classifiers/{name}/learn", json=body, headers=auth("learn"))  # noqa: E731
    good = png_b64(np.eye(8) * 16)
    # a corrupt image rejects the whole batch and names the item
    batch = [{"label": "a", "image_b64": good}] * 3 + [
        {"label": "b", "image_b64": base64.b64encode(b"\x89PNG\r\n garbage").decode()}
    ]
    r = learn("img", {"task": "t", "strategy": "naive", "samples": batch})
    problem(r, 422, "samples[3]", "not a decodable image")
    assert r.json()["index"] == 3
    truncated = base64.b64encode(base64.b64decode(good)[:30]).decode()
    problem(
        learn("img", {"task": "t", "strategy": "naive", "samples": [{"label": "a", "image_b64": truncated}]}),
        422,
        "samples[0]",
    )
    problem(
        learn("vec", {"task": "t", "strategy": "naive", "samples": [{"label": "a", "vector": [1, 2, 3]}]}),
        422,
        "samples[0]",
        "takes 4",
    )
    problem(learn("vec", {"task": "t", "strategy": "naive", "samples": []}), 422, "empty")
    problem(learn("vec", {"task": "t", "strategy": "sgd", "samples": vectors(2, "a", 0)}), 422, "unknown strategy")
    problem(
        learn("vec", {"task": "t", "strategy": "replay", "retention": "discard", "samples": vectors(2, "a", 0)}),
        422,
        "discard",
    )
    problem(
        learn("vec", {"task": "t", "strategy": "ewc", "params": {"lam": 1}, "samples": vectors(2, "a", 0)}), 422, "lam"
    )
    # GEM and A-GEM keep an episodic memory: refused under retention discard, naming what keeps no sample
    for strategy in ("agem", "gem"):
        body = {"task": "t", "strategy": strategy, "retention": "discard", "samples": vectors(2, "a", 0)}
        problem(learn("vec", body), 422, f"strategy '{strategy}' keeps training samples", "generative_replay")
        problem(learn("til", body), 422, "discard", "ewc/lwf/mas/imm")
    # PackNet and progressive networks compute each task with its own network: refused without task identities
    for strategy in ("packnet", "progressive"):
        body = {"task": "t", "strategy": strategy, "samples": vectors(2, "a", 0) + vectors(2, "b", 3)}
        problem(learn("vec", body), 422, f"strategy '{strategy}'", "task-incremental", "replay")
    problem(learn("nope", {"task": "t", "strategy": "naive", "samples": vectors(2, "a", 0)}), 404, "nope")
    problem(
        c.post(
            "/v1/classifiers/vec/learn",
            content=b"{not json",
            headers={**auth("learn"), "content-type": "application/json"},
        ),
        400,  # as on every route (issue 30: learn used to say 422)
        "JSON",
    )
    problem(
        c.post(
            "/v1/classifiers", json={"name": "bad name!", "input": {"kind": "vector", "dim": 2}}, headers=auth("admin")
        ),
        422,
        "name",
    )
    # an oversize body is refused with 413 before it is read
    big = {"task": "t", "strategy": "naive", "samples": [{"label": "a", "image_b64": "A" * (70 * 2**20)}]}
    problem(learn("img", big), 413)
    # nothing was queued by any of that
    assert c.get("/v1/classifiers/vec/versions", headers=auth("predict")).json() == []

    # task-incremental predict: the task is required and must exist
    body = {"task": "first", "strategy": "lwf", "samples": vectors(10, "x", 0) + vectors(10, "y", 3)}
    job = wait_job(c, learn("til", body).json()["job_id"])
    assert job["status"] == "promoted", job
    pred = lambda body: c.post("/v1/classifiers/til/predict", json=body, headers=auth("predict"))  # noqa: E731
    problem(pred({"inputs": [{"vector": [0, 0, 0, 0]}]}), 422, "task-incremental", "first")
    problem(pred({"inputs": [{"vector": [0, 0, 0, 0]}], "task": "second"}), 422, "unknown task 'second'")
    ok = pred({"inputs": [{"vector": [3, 3, 3, 3]}], "task": "first"})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "y"
    problem(pred({"inputs": [{"vector": [0, 0, 0, 0]}], "task": "first", "version": 9}), 404, "no version 9")
    problem(
        c.post("/v1/classifiers/vec/predict", json={"inputs": [{"vector": [0, 0, 0, 0]}]}, headers=auth("predict")),
        409,
        "no active version",
    )
    problem(c.post("/v1/classifiers/til/rollback", json={}, headers=auth("admin")), 409, "no earlier")
    # found by schemathesis: automatic OPTIONS answers and huge version numbers gave 500s
    assert c.request("OPTIONS", "/v1/classifiers/til/versions").status_code < 500
    problem(c.get("/v1/classifiers/til/versions/66805706650302382080", headers=auth("predict")), 422, "number")
    problem(pred({"inputs": [{"vector": [0, 0, 0, 0]}], "task": "first", "version": 2**63}), 422, "version")
