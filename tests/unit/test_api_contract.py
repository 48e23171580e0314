"""The HTTP API against its own OpenAPI document, in process (no worker, no torch).

What tests/e2e/test_fuzz.py relies on, and the bugs its schemathesis run found, each pinned here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from pydantic import BaseModel, TypeAdapter

from model_core.strategy_specs import SPECS
from service.http.app import create_app
from service.persistence.migrations import upgrade
from service.schemas import (
    NAME,
    AuditView,
    ClassifierView,
    JobEvent,
    JobView,
    Problem,
    Ready,
    StrategyView,
    VersionView,
)
from service.settings import Settings

# Litestar 2.25 warns about parameter styles its 3.0 drops (inferred path parameters, ``data`` without a
# body marker); moving the routes off them is its own change. The e2e tests never see this: they run
# ``engram serve`` in a subprocess.
pytestmark = pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning")

ADMIN, LEARN, PREDICT = ({"Authorization": f"Bearer {k}"} for k in ("adm-1", "lrn-2", "prd-3"))
VECTORS = [{"label": lab, "vector": [float(i), 0.0, 1.0, 2.0]} for lab in ("a", "b") for i in range(3)]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("api"), api_keys="admin:adm-1,learn:lrn-2,predict:prd-3")
    upgrade(settings.db_url)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def doc(client: TestClient[Any]) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/schema/openapi.json").json()
    return document


def conforms(model: Any, content: bytes) -> Any:
    """``content`` validated against a documented model, strictly (no coercion, no unknown fields)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate_json(content, strict=True)
    return TypeAdapter(model).validate_json(content, strict=True)


def problem(r: Any, status: int) -> Problem:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    answer: Problem = conforms(Problem, r.content)
    assert answer.status == status
    return answer


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_v1_operation_documents_its_answers_and_errors(doc: dict[str, Any]) -> None:
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path, method, op in operations(doc):
        where = f"{method.upper()} {path}"
        successes = [s for s in op["responses"] if s.startswith("2")]
        assert len(successes) == 1, where
        for media in op["responses"][successes[0]]["content"].values():
            assert media["schema"] not in ({}, {"type": "object", "additionalProperties": {}}), where
        if not path.startswith("/v1/"):
            continue
        assert op["security"] == [{"bearer": []}], where
        assert "401" in op["responses"], where
        for status, answer in op["responses"].items():
            if status.startswith("4"):
                assert answer["content"] == {"application/problem+json": {"schema": problem_ref}}, (where, status)


def test_request_schemas_state_what_the_server_enforces(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for name in ("ClassifierCreate", "ImageInput", "VectorInput", "GateSettings", "PredictRequest"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["ClassifierCreate"]["properties"]["name"]["pattern"] == NAME
    assert schemas["GateSettings"]["properties"]["tolerance"]["anyOf"][0]["minimum"] == 0  # Litestar drops a 0
    body = doc["paths"]["/v1/classifiers/{name}/learn"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "multipart/form-data"}
    learn = body["content"]["application/json"]["schema"]
    assert learn["properties"]["strategy"]["enum"] == [*sorted(SPECS), None]  # null: the classifier's default
    assert "strategy" not in learn.get("required", [])
    assert learn["properties"]["options"]["additionalProperties"] is False


def test_an_unknown_strategy_gets_a_422_naming_the_valid_ones(client: TestClient[Any]) -> None:
    r = client.post("/v1/classifiers/x/learn", headers=LEARN, json={"task": "t", "strategy": "sgd", "samples": VECTORS})
    detail = problem(r, 422).detail
    assert "unknown strategy 'sgd'" in detail and all(name in detail for name in SPECS)


def test_json_of_the_wrong_type_is_refused_not_coerced(client: TestClient[Any]) -> None:
    body = {"name": "coerce", "input": {"kind": "vector", "dim": 4}, "gate": {"manual_approval": 0}}
    assert problem(client.post("/v1/classifiers", headers=ADMIN, json=body), 422).errors
    r = client.post("/v1/classifiers/none/predict", headers=PREDICT, json={"inputs": [{"vector": [1]}], "top_k": "2"})
    assert "top_k" in problem(r, 422).detail
    channels = {"name": "coerce", "input": {"kind": "image", "channels": True, "height": 8, "width": 8}}
    assert "channels" in problem(client.post("/v1/classifiers", headers=ADMIN, json=channels), 422).detail
    # JSON Schema counts 2.0 as an integer, so the server does too: this gets past validation to the 404.
    problem(client.post("/v1/classifiers/none/rollback", headers=ADMIN, json={"to_version": 2.0}), 404)


def test_options_lists_every_method_of_the_path(client: TestClient[Any], doc: dict[str, Any]) -> None:
    assert client.options("/v1/classifiers").headers["allow"] == "GET, OPTIONS, POST"  # litestar#4169
    for path, item in doc["paths"].items():
        url = path.replace("{name}", "x").replace("{number}", "1").replace("{job_id}", "j")
        r = client.options(url)
        assert r.status_code == 204, url
        assert r.headers["allow"] == ", ".join(sorted({m.upper() for m in item} | {"OPTIONS"})), url


def test_a_multipart_form_without_labels_or_files_is_a_422_not_a_500(client: TestClient[Any]) -> None:
    form = {"task": "t", "strategy": "naive"}
    r = client.post("/v1/classifiers/x/learn", headers=LEARN, data=form, files={"file": ("a.png", b"\x89PNG")})
    assert "1 files but 0 labels" in problem(r, 422).detail
    r = client.post("/v1/classifiers/x/learn", headers=LEARN, data=form, files={"label": (None, b"a")})
    assert "0 files but 1 labels" in problem(r, 422).detail


def test_answers_conform_to_the_documented_schemas(client: TestClient[Any]) -> None:
    vec = {"name": "vec", "input": {"kind": "vector", "dim": 4}}
    r = client.post("/v1/classifiers", headers=ADMIN, json=vec)
    assert r.status_code == 201 and conforms(ClassifierView, r.content).active_version is None
    conforms(list[ClassifierView], client.get("/v1/classifiers", headers=PREDICT).content)
    conforms(ClassifierView, client.get("/v1/classifiers/vec", headers=PREDICT).content)
    strategies = conforms(dict[str, StrategyView], client.get("/v1/strategies", headers=PREDICT).content)
    assert set(strategies) == set(SPECS)
    assert conforms(list[VersionView], client.get("/v1/classifiers/vec/versions", headers=PREDICT).content) == []
    assert conforms(list[AuditView], client.get("/v1/classifiers/vec/audit", headers=LEARN).content) == []
    assert conforms(Ready, client.get("/readyz").content).serving == {}

    r = client.post(
        "/v1/classifiers/vec/learn", headers=LEARN, json={"task": "t", "strategy": "naive", "samples": VECTORS}
    )
    assert r.status_code == 202, r.text
    job = conforms(JobView, r.content)
    assert job.status == "queued"  # no worker in this process
    conforms(JobView, client.get(f"/v1/jobs/{job.job_id}", headers=LEARN).content)
    r = client.post(f"/v1/jobs/{job.job_id}/cancel", headers=LEARN)
    assert r.status_code == 200 and conforms(JobView, r.content).status == "cancelled"

    problem(client.get("/v1/classifiers/none", headers=PREDICT), 404)
    problem(client.post("/v1/classifiers", headers=ADMIN, json=vec), 409)
    problem(client.post(f"/v1/jobs/{job.job_id}/cancel", headers=LEARN), 409)
    problem(client.post("/v1/classifiers/vec/predict", headers=PREDICT, json={"inputs": [{"vector": [1]}]}), 409)
    problem(client.get("/v1/classifiers"), 401)
    problem(client.post("/v1/classifiers", headers=PREDICT, json=vec), 403)
    problem(client.post("/v1/classifiers", headers={**ADMIN, "content-type": "application/json"}, content=b"{"), 400)
    bad = [*VECTORS[:-1], {"label": "b", "vector": [1, 2]}]
    r = client.post("/v1/classifiers/vec/learn", headers=LEARN, json={"task": "t", "strategy": "naive", "samples": bad})
    item = problem(r, 422)
    assert (item.field, item.index) == ("samples", len(VECTORS) - 1) and item.reason


def test_job_events_carry_the_job_as_the_json_api_writes_it(client: TestClient[Any]) -> None:
    client.post("/v1/classifiers", headers=ADMIN, json={"name": "events", "input": {"kind": "vector", "dim": 4}})
    body = {"task": "t", "strategy": "naive", "samples": VECTORS}
    job_id = client.post("/v1/classifiers/events/learn", headers=LEARN, json=body).json()["job_id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=LEARN)  # an ended job: its stream is one 'end' event
    r = client.get(f"/v1/jobs/{job_id}/events", headers=LEARN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    fields = dict(line.split(": ", 1) for line in r.text.splitlines() if line)
    event = conforms(JobEvent, TypeAdapter(dict[str, str]).dump_json(fields))
    assert event.event == "end" and event.data.status == "cancelled"
    # Byte for byte what GET /v1/jobs/{job_id} answers: timestamps were "2026-01-01 10:00:00+00:00"
    # (str() of a datetime), which is not an RFC 3339 date-time.
    assert fields["data"] == client.get(f"/v1/jobs/{job_id}", headers=LEARN).text
