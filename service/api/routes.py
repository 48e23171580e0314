"""Thin controllers: authorise, parse, call the application service, return its answer."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter
from litestar.response import File, ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from service.api.schemas import ClassifierCreate, LearnRequest, PredictRequest, PromoteRequest, RollbackRequest
from service.application import EngramService, Invalid
from service.auth import KeyRing
from service.db import TERMINAL

# Version numbers fit the database's integer column; larger ones are refused before any query.
VersionNumber = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="version number")]


def require_role(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: the route's ``opt['role']`` decides the role the bearer key needs."""
    if connection.scope.get("method") == "OPTIONS":
        return  # CORS preflight and Litestar's automatic OPTIONS answers carry no data
    keys: KeyRing = connection.app.state.keyring
    role = handler.opt.get("role", "admin")  # a route that forgot to declare its role needs admin
    connection.state.actor = keys.authorise(connection.headers.get("authorization"), role)


def svc(request: Request[Any, Any, Any]) -> EngramService:
    service: EngramService = request.app.state.service
    return service


@get("/strategies", opt={"role": "predict"}, sync_to_thread=False)
def strategies(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return svc(request).strategies()


@post("/classifiers", opt={"role": "admin"}, status_code=HTTP_201_CREATED, sync_to_thread=True)
def create_classifier(request: Request[Any, Any, Any], data: ClassifierCreate) -> dict[str, Any]:
    return svc(request).create_classifier(data)


@get("/classifiers", opt={"role": "predict"}, sync_to_thread=True)
def list_classifiers(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return svc(request).list_classifiers()


@get("/classifiers/{name:str}", opt={"role": "predict"}, sync_to_thread=True)
def get_classifier(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    return svc(request).get_classifier(name)


async def _learn_body(request: Request[Any, Any, Any]) -> LearnRequest:
    """JSON, or a multipart form: fields task, strategy, retention, and pairs of ``file`` + ``label``."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        files, labels = form.getall("file"), form.getall("label")
        if len(files) != len(labels):
            raise Invalid(f"the form has {len(files)} files but {len(labels)} labels; send one label per file")
        samples = []
        for f, label in zip(files, labels, strict=True):
            raw = await f.read() if hasattr(f, "read") else str(f).encode()
            samples.append({"label": label, "image_b64": base64.b64encode(raw).decode()})
        fields = {k: form.get(k) for k in ("task", "strategy", "retention") if form.get(k) is not None}
        return LearnRequest.model_validate({**fields, "samples": samples})
    if not ctype.startswith("application/json"):
        raise Invalid("send application/json or multipart/form-data")
    try:
        body = await request.json()
    except HTTPException:
        raise  # e.g. 413: the body is over the size limit
    except Exception:
        raise Invalid("the body is not valid JSON") from None
    return LearnRequest.model_validate(body)


@post("/classifiers/{name:str}/learn", opt={"role": "learn"}, status_code=HTTP_202_ACCEPTED)
async def learn(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    body = await _learn_body(request)
    return await anyio.to_thread.run_sync(svc(request).submit_learn, name, body)


@get("/jobs/{job_id:str}", opt={"role": "learn"}, sync_to_thread=True)
def get_job(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    return svc(request).get_job(job_id)


@post("/jobs/{job_id:str}/cancel", opt={"role": "learn"}, status_code=200, sync_to_thread=True)
def cancel_job(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    return svc(request).cancel_job(job_id)


@get("/jobs/{job_id:str}/events", opt={"role": "learn"})
async def job_events(request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
    service = svc(request)
    await anyio.to_thread.run_sync(service.get_job, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        last = None
        while True:
            view = await anyio.to_thread.run_sync(service.get_job, job_id)
            data = json.dumps(view, default=str)
            done = view["status"] in TERMINAL
            if data != last:
                yield ServerSentEventMessage(data=data, event="end" if done else "progress")
                last = data
            if done:
                return
            await anyio.sleep(0.5)

    return ServerSentEvent(stream())


@post("/classifiers/{name:str}/predict", opt={"role": "predict"}, status_code=200, sync_to_thread=True)
def predict(request: Request[Any, Any, Any], name: str, data: PredictRequest) -> dict[str, Any]:
    return svc(request).predict(name, data)


@get("/classifiers/{name:str}/versions", opt={"role": "predict"}, sync_to_thread=True)
def list_versions(request: Request[Any, Any, Any], name: str) -> list[dict[str, Any]]:
    return svc(request).list_versions(name)


@get("/classifiers/{name:str}/versions/{number:int}", opt={"role": "predict"}, sync_to_thread=True)
def get_version(request: Request[Any, Any, Any], name: str, number: VersionNumber) -> dict[str, Any]:
    return svc(request).get_version(name, number)


@get("/classifiers/{name:str}/versions/{number:int}/model.onnx", opt={"role": "learn"}, sync_to_thread=True)
def get_onnx(request: Request[Any, Any, Any], name: str, number: VersionNumber) -> File:
    path = svc(request).onnx_path(name, number)
    return File(path, filename=f"{name}-v{number}.onnx", media_type="application/octet-stream")


@post(
    "/classifiers/{name:str}/versions/{number:int}/promote", opt={"role": "admin"}, status_code=200, sync_to_thread=True
)
def promote(
    request: Request[Any, Any, Any], name: str, number: VersionNumber, data: PromoteRequest | None = None
) -> dict[str, Any]:
    data = data or PromoteRequest()
    return svc(request).promote(name, number, request.state.actor, data.force, data.reason)


@post("/classifiers/{name:str}/rollback", opt={"role": "admin"}, status_code=200, sync_to_thread=True)
def rollback(request: Request[Any, Any, Any], name: str, data: RollbackRequest | None = None) -> dict[str, Any]:
    data = data or RollbackRequest()
    return svc(request).rollback(name, data.to_version, request.state.actor, data.reason)


@get("/classifiers/{name:str}/audit", opt={"role": "learn"}, sync_to_thread=True)
def audit(request: Request[Any, Any, Any], name: str) -> list[dict[str, Any]]:
    return svc(request).audit(name)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True)
def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    try:
        svc(request).list_classifiers()
    except Exception as exc:
        return Response({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, status_code=503)
    return Response({"status": "ready", "serving": request.app.state.serving.active_versions()})


V1 = Router(
    path="/v1",
    guards=[require_role],
    route_handlers=[strategies, create_classifier, list_classifiers, get_classifier, learn, get_job, cancel_job,
                    job_events, predict, list_versions, get_version, get_onnx, promote, rollback, audit],
)  # fmt: skip
ROUTES = [V1, healthz, readyz]
