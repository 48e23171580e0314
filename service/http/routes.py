"""Thin controllers: authorise, parse, call the application service, return its answer.

Handlers return the application's dicts; ``responses=answers(...)`` documents each answer's schema
(``service.schemas``) and the problem+json errors the operation itself can give. ``guard_answers``
adds those of the /v1 guard (401, 403, 415), derived from each route's role and method.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from litestar import Request, Response, Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import FormMultiDict
from litestar.exceptions import ClientException, HTTPException, SerializationException
from litestar.handlers.base import BaseRouteHandler
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.response import File, ServerSentEvent, ServerSentEventMessage
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json
from litestar.status_codes import (
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
)

from service.application.services import Invalid
from service.http.auth import KeyRing
from service.http.deps import VersionNumber, svc
from service.http.limits import set_predict_bound
from service.http.mapping import to_learn, to_new_classifier, to_predict
from service.http.openapi import LearnOperation, answers, problem_answers
from service.http.predict_binary import predict_binary
from service.schemas import (
    TERMINAL,
    AuditView,
    CapturedDeleted,
    CapturedInputs,
    ClassifierCreate,
    ClassifierView,
    DeleteResult,
    Health,
    JobEvent,
    JobView,
    LearnRequest,
    LifecycleEventView,
    PredictRequest,
    PredictResult,
    PromoteRequest,
    PruneResult,
    Ready,
    RetentionRequest,
    RetentionView,
    RollbackRequest,
    StorageUsage,
    StrategyView,
    Unready,
    VersionView,
)

# Guards and hooks are async on purpose: Litestar runs a sync one in a worker thread, on every request.


async def guard_v1(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The /v1 guard: the key's role first (401/403), then the body's content type (415)."""
    require_role(connection, handler)
    require_json_body(connection, handler)
    set_predict_bound(connection, handler)


def guard_answers(handler: HTTPRouteHandler) -> HTTPRouteHandler:
    """Add to ``handler``'s documented answers the problems ``guard_v1`` can give before it runs: 401 on
    every operation, 403 unless its role is predict (which every key has), 415 on a POST."""
    role = handler.opt.get("role", "admin")
    codes = [401, *([403] if role != "predict" else []), *([415] if {"POST", "PUT"} & set(handler.http_methods) else [])]
    handler.responses = dict(sorted({**(handler.responses or {}), **problem_answers(*codes)}.items()))
    return handler


def require_role(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: the route's ``opt['role']`` decides the role the bearer key needs."""
    if connection.scope.get("method") == "OPTIONS":
        return  # CORS preflight and Litestar's automatic OPTIONS answers carry no data
    keys: KeyRing = connection.app.state.keyring
    role = handler.opt.get("role", "admin")  # a route that forgot to declare its role needs admin
    connection.state.actor = keys.authorise(connection.headers.get("authorization"), role)


JSON = ("application/json",)


def require_json_body(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: a POST with a body must say it is JSON (or, where ``opt['content_types']`` allows, a
    multipart form); a body sent as text/plain or a urlencoded form gets 415 instead of being parsed."""
    if connection.scope.get("method") not in ("POST", "PUT"):
        return
    headers = connection.headers
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        if handler.opt.get("body_required"):  # the same answer on every route that needs a body
            raise ClientException("the request body is empty; send " + " or ".join(handler.opt.get("content_types", JSON)))
        if not ctype:
            return  # no body at all (promote and rollback take an optional one)
    allowed = handler.opt.get("content_types", JSON)
    if ctype not in allowed:
        raise HTTPException(
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"Content-Type {ctype or '(none)'!r} is not accepted here; send {' or '.join(allowed)}",
        )


async def answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """``before_request`` hook: answer OPTIONS with every method of the path.

    Litestar 2's automatic OPTIONS handler lists only the methods of the first handler registered on a
    path (litestar#4169, fixed in 3.0), so ``Allow`` for /v1/classifiers lacked GET. The service defines
    no OPTIONS handler of its own; every OPTIONS request reaching a handler is one of those.
    """
    if request.method != "OPTIONS":
        return None
    template = request.scope.get("path_template")
    routes = (r for r in request.app.routes if isinstance(r, HTTPRoute) and r.path_format == template)
    route = next(routes, None)
    if route is None:
        return None
    return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(sorted(route.methods))})


@get("/strategies", opt={"role": "predict"}, sync_to_thread=False,
     responses=answers(200, dict[str, StrategyView], "Each strategy by name"))  # fmt: skip
def strategies(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return svc(request).strategies()


@post("/classifiers", opt={"role": "admin", "body_required": True}, status_code=HTTP_201_CREATED, sync_to_thread=True,
      responses=answers(201, ClassifierView, "The new classifier", 400, 409, 413, 422))  # fmt: skip
def create_classifier(request: Request[Any, Any, Any], data: ClassifierCreate) -> dict[str, Any]:
    return svc(request).classifiers.create_classifier(to_new_classifier(data))


@get("/classifiers", opt={"role": "predict"}, sync_to_thread=True,
     responses=answers(200, list[ClassifierView], "Every classifier, by name"))  # fmt: skip
def list_classifiers(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return svc(request).classifiers.list_classifiers()


@get("/classifiers/{name:str}", opt={"role": "predict"}, sync_to_thread=True,
     responses=answers(200, ClassifierView, "The classifier", 400, 404))  # fmt: skip
def get_classifier(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    return svc(request).classifiers.get_classifier(name)


LEARN_FORM_FIELDS = frozenset({"task", "strategy", "retention", "file", "label"})


def refuse_unknown_fields(form: FormMultiDict, allowed: frozenset[str]) -> None:
    """Unknown form fields are refused, as unknown JSON fields are."""
    unknown = sorted({str(k) for k in form if k not in allowed})
    if unknown:
        raise Invalid(f"the form has unknown field(s) {[u[:64] for u in unknown[:5]]}; it takes "
                      f"{', '.join(sorted(allowed))}")  # fmt: skip


async def _learn_body(request: Request[Any, Any, Any]) -> LearnRequest:
    """JSON, or a multipart form: fields task, strategy, retention, and pairs of ``file`` + ``label``."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        refuse_unknown_fields(form, LEARN_FORM_FIELDS)
        files, labels = form.getall("file", []), form.getall("label", [])  # a form may lack either
        if len(files) != len(labels):
            raise Invalid(f"the form has {len(files)} files but {len(labels)} labels; send one label per file")
        samples = []
        for f, label in zip(files, labels, strict=True):
            raw = await f.read() if hasattr(f, "read") else str(f).encode()
            samples.append({"label": label, "image_b64": base64.b64encode(raw).decode()})
        fields = {k: form.get(k) for k in ("task", "strategy", "retention") if form.get(k) is not None}
        return LearnRequest.model_validate({**fields, "samples": samples})
    try:
        body = await request.json()
    except SerializationException as exc:  # EngramRequest's own wording; 400, as every JSON route answers it
        raise ClientException(str(exc.detail)) from None
    except HTTPException:
        raise  # e.g. 413: the body is over the size limit
    return LearnRequest.model_validate(body)


@post("/classifiers/{name:str}/learn", status_code=HTTP_202_ACCEPTED,
      opt={"role": "learn", "content_types": ("application/json", "multipart/form-data"), "body_required": True},
      operation_class=LearnOperation,
      responses=answers(202, JobView, "The queued job", 400, 404, 413, 422, 503))  # fmt: skip
async def learn(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    body = await _learn_body(request)
    return await anyio.to_thread.run_sync(svc(request).learning.submit_learn, name, to_learn(body))


@get("/jobs/{job_id:str}", opt={"role": "learn"}, sync_to_thread=True,
     responses=answers(200, JobView, "The job", 400, 404))  # fmt: skip
def get_job(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    return svc(request).learning.get_job(job_id)


@post("/jobs/{job_id:str}/cancel", opt={"role": "learn"}, status_code=200, sync_to_thread=True,
      responses=answers(200, JobView, "The job, cancelled or asked to stop", 400, 404, 409))  # fmt: skip
def cancel_job(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    return svc(request).learning.cancel_job(job_id)


EVENTS_POLL_S = 0.5  # how often a job's event stream reads the job when nothing notifies
EVENTS_FALLBACK_S = 5.0  # and when PostgreSQL notifies its changes


@get("/jobs/{job_id:str}/events", opt={"role": "learn"},
     responses=answers(200, JobEvent, "Server-sent events: 'progress' with the job on each change, then 'end'",
                       400, 404, media_type="text/event-stream"))  # fmt: skip
async def job_events(request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
    service = svc(request).learning
    first = await anyio.to_thread.run_sync(service.get_job, job_id)  # 404 before the stream starts

    state = request.app.state

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        view, last = first, None
        with state.job_watch.watch(job_id) as changed:
            while True:
                data = encode_json(view).decode()  # as the JSON API writes it (RFC 3339 timestamps)
                done = view["status"] in TERMINAL
                if data != last:
                    yield ServerSentEventMessage(data=data, event="end" if done else "progress")
                    last = data
                if done:
                    return
                # told by PostgreSQL's NOTIFY when the job changes (service.persistence.notify); read it anyway
                # every few seconds, and every half second where nothing notifies (SQLite, a lost connection)
                await changed.wait(EVENTS_FALLBACK_S if state.listener.connected.is_set() else EVENTS_POLL_S)
                view = await anyio.to_thread.run_sync(service.get_job, job_id)

    return ServerSentEvent(stream())


@post("/classifiers/{name:str}/predict", opt={"role": "predict", "body_required": True, "body_bound": "predict"},
      status_code=200,
      responses=answers(200, PredictResult, "One prediction per input", 400, 404, 409, 410, 413, 422, 503))  # fmt: skip
async def predict(request: Request[Any, Any, Any], name: str, data: PredictRequest) -> dict[str, Any]:
    return await svc(request).serving.predict(name, to_predict(data))


@get("/classifiers/{name:str}/versions", opt={"role": "predict"}, sync_to_thread=True,
     responses=answers(200, list[VersionView], "Every version, oldest first", 400, 404))  # fmt: skip
def list_versions(request: Request[Any, Any, Any], name: str) -> list[dict[str, Any]]:
    return svc(request).versions.list_versions(name)


@get("/classifiers/{name:str}/versions/{number:int}", opt={"role": "predict"}, sync_to_thread=True,
     responses=answers(200, VersionView, "The version", 400, 404, 422))  # fmt: skip
def get_version(request: Request[Any, Any, Any], name: str, number: VersionNumber) -> dict[str, Any]:
    return svc(request).versions.get_version(name, number)


@get("/classifiers/{name:str}/versions/{number:int}/model.onnx", opt={"role": "learn"}, sync_to_thread=True,
     responses=answers(200, bytes, "The version's ONNX model", 400, 404, 410, 422,
                       media_type="application/octet-stream"))  # fmt: skip
def get_onnx(request: Request[Any, Any, Any], name: str, number: VersionNumber) -> File:
    path = svc(request).versions.onnx_path(name, number)
    return File(path, filename=f"{name}-v{number}.onnx", media_type="application/octet-stream")


@post("/classifiers/{name:str}/versions/{number:int}/promote", opt={"role": "admin"}, status_code=200,
      sync_to_thread=True,
      responses=answers(200, VersionView, "The version, now active", 400, 404, 409, 410, 413, 422, 503))  # fmt: skip
def promote(
    request: Request[Any, Any, Any], name: str, number: VersionNumber, data: PromoteRequest | None = None
) -> dict[str, Any]:
    data = data or PromoteRequest()
    return svc(request).versions.promote(name, number, request.state.actor, data.force, data.reason)


@post("/classifiers/{name:str}/rollback", opt={"role": "admin"}, status_code=200, sync_to_thread=True,
      responses=answers(200, VersionView, "The version rolled back to, now active",
                        400, 404, 409, 410, 413, 422, 503))  # fmt: skip
def rollback(request: Request[Any, Any, Any], name: str, data: RollbackRequest | None = None) -> dict[str, Any]:
    data = data or RollbackRequest()
    return svc(request).versions.rollback(name, data.to_version, request.state.actor, data.reason)


@get("/classifiers/{name:str}/audit", opt={"role": "learn"}, sync_to_thread=True,
     responses=answers(200, list[AuditView], "Promotions and rollbacks, oldest first", 400, 404))  # fmt: skip
def audit(request: Request[Any, Any, Any], name: str) -> list[dict[str, Any]]:
    return svc(request).versions.audit(name)


@get("/classifiers/{name:str}/unknowns", opt={"role": "learn"}, sync_to_thread=True,
     responses=answers(200, CapturedInputs, "Inputs flagged unknown and kept (capture), oldest first", 400, 404))  # fmt: skip
def captured(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    return svc(request).classifiers.captured(name)


@delete("/classifiers/{name:str}/unknowns", opt={"role": "learn"}, status_code=200, sync_to_thread=True,
        responses=answers(200, CapturedDeleted, "How many captured inputs were deleted", 400, 404, 422))  # fmt: skip
def delete_captured(
    request: Request[Any, Any, Any], name: str, through: Annotated[int, Parameter(ge=1, le=2**31 - 1)]
) -> dict[str, Any]:
    return svc(request).classifiers.delete_captured(name, through)


# --- lifecycle: retention, prune, delete, sizes (service.application.lifecycle) ------------------------------


@delete("/classifiers/{name:str}", opt={"role": "admin"}, status_code=200, sync_to_thread=True,
        responses=answers(200, DeleteResult, "The classifier is gone, with its versions, jobs and captured inputs",
                          400, 404, 409))  # fmt: skip
def delete_classifier(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    return svc(request).lifecycle.delete(name, request.state.actor)


@post("/classifiers/{name:str}/prune", opt={"role": "admin"}, status_code=200, sync_to_thread=True,
      responses=answers(200, PruneResult, "The versions pruned (or, with dry_run, that would be) and kept, and why",
                        400, 404, 422))  # fmt: skip
def prune(request: Request[Any, Any, Any], name: str, dry_run: bool = False) -> dict[str, Any]:
    return svc(request).lifecycle.prune(name, request.state.actor, dry_run)


@get("/classifiers/{name:str}/retention", opt={"role": "learn"}, sync_to_thread=True,
     responses=answers(200, RetentionView, "The retention policy a prune applies", 400, 404))  # fmt: skip
def get_retention(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    return svc(request).lifecycle.retention(name)


@put("/classifiers/{name:str}/retention", opt={"role": "admin", "body_required": True}, sync_to_thread=True,
     responses=answers(200, RetentionView, "The classifier's own policy, now in force", 400, 404, 422))  # fmt: skip
def set_retention(request: Request[Any, Any, Any], name: str, data: RetentionRequest) -> dict[str, Any]:
    return svc(request).lifecycle.set_retention(name, data.model_dump(exclude_none=True))


@delete("/classifiers/{name:str}/retention", opt={"role": "admin"}, status_code=200, sync_to_thread=True,
        responses=answers(200, RetentionView, "The deployment's default, now in force", 400, 404))  # fmt: skip
def reset_retention(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    return svc(request).lifecycle.set_retention(name, None)


@get("/storage", opt={"role": "learn"}, sync_to_thread=True,
     responses=answers(200, dict[str, StorageUsage], "Artifact-store bytes per classifier"))  # fmt: skip
def storage(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return svc(request).lifecycle.refresh_usage()


@get("/lifecycle", opt={"role": "admin"}, sync_to_thread=True,
     responses=answers(200, list[LifecycleEventView], "Prunes, deletions, imports and restores, newest first",
                       400, 422))  # fmt: skip
def lifecycle_events(request: Request[Any, Any, Any], classifier: str | None = None) -> list[dict[str, Any]]:
    return svc(request).lifecycle.events(classifier)


@get("/healthz", sync_to_thread=False, responses=answers(200, Health, "The process is up"))
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True,
     responses={**answers(200, Ready, "The database answers; the versions this replica serves"),
                **answers(503, Unready, "The database does not answer")})  # fmt: skip
def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    try:
        svc(request).classifiers.ping()
    except Exception as exc:
        return Response({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, status_code=503)
    service = svc(request)
    return Response({"status": "ready", "serving": service.serving.state.active_versions(),
                     "load_failures": service.serving.load_failures()})  # fmt: skip


V1 = Router(
    path="/v1",
    guards=[guard_v1],
    security=[{"bearer": []}],
    route_handlers=[guard_answers(h) for h in (
        strategies, create_classifier, list_classifiers, get_classifier, learn, get_job, cancel_job, job_events,
        predict, predict_binary, list_versions, get_version, get_onnx, promote, rollback, audit, captured,
        delete_captured, delete_classifier, prune, get_retention, set_retention, reset_retention, storage,
        lifecycle_events,
    )],
)  # fmt: skip
ROUTES = [V1, healthz, readyz]
