"""The one map from exceptions to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import pydantic
import sqlalchemy.exc
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from service.domain.errors import Conflict, Gone, Invalid, NotFound, PointerMoved, Unavailable
from service.http.auth import AuthError
from service.inference.binary import Undecodable, Unfit
from service.inference.decoding import TooMuchToDecode
from service.inference.inputs import InputError

log = logging.getLogger("engram.api")
PROBLEM = "application/problem+json"


def problem(
    request: Request[Any, Any, Any], status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response[Any]:
    # With type about:blank, RFC 9457 says the title SHOULD be the status code's phrase.
    body = {"type": "about:blank", "title": _phrase(status), "status": status, "detail": detail,
            "instance": request.url.path, **extra}  # fmt: skip
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a code http.HTTPStatus does not name
        return "Error"


def _auth(request: Request[Any, Any, Any], exc: AuthError) -> Response[Any]:
    headers = {"WWW-Authenticate": 'Bearer realm="engram"'} if exc.status == 401 else None
    return problem(request, exc.status, exc.detail, headers)


def _input(request: Request[Any, Any, Any], exc: InputError) -> Response[Any]:
    return problem(request, 422, str(exc), field=exc.field, index=exc.index, reason=exc.reason)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    where = "; ".join(f"{e.get('key', '?')}: {e.get('message', '')}" for e in errors if isinstance(e, dict))
    return problem(request, 422, where or str(exc.detail), errors=errors)


def _pydantic(request: Request[Any, Any, Any], exc: pydantic.ValidationError) -> Response[Any]:
    errors = [{"key": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
    return problem(request, 422, "; ".join(f"{e['key']}: {e['message']}" for e in errors), errors=errors)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return problem(request, exc.status_code, str(exc.detail), exc.headers)


def _moved(request: Request[Any, Any, Any], exc: PointerMoved) -> Response[Any]:
    return problem(request, 409, str(exc), active_version=exc.current)


def _unavailable(request: Request[Any, Any, Any], exc: Unavailable) -> Response[Any]:
    return problem(request, 503, str(exc), {"Retry-After": str(exc.retry_after)})


def _database(request: Request[Any, Any, Any], exc: sqlalchemy.exc.SQLAlchemyError) -> Response[Any]:
    # The database does not answer (stopped, restarting, unreachable, pool exhausted, SQLite locked):
    # nothing was changed, and the same request may succeed later. Predictions of served versions never
    # get here: they do not touch the database.
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem(request, 503, f"the database is unavailable ({type(exc).__name__}); nothing was changed, retry "
                   "later", {"Retry-After": "5"})  # fmt: skip


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(request, 500, "the server failed to handle this request; see its log")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AuthError: _auth,
    NotFound: lambda r, e: problem(r, 404, str(e)),
    Gone: lambda r, e: problem(r, 410, str(e)),
    Conflict: lambda r, e: problem(r, 409, str(e)),
    PointerMoved: _moved,
    Unavailable: _unavailable,
    sqlalchemy.exc.OperationalError: _database,  # connection refused or lost, server shutting down, locked
    sqlalchemy.exc.InterfaceError: _database,  # the driver's connection is closed
    sqlalchemy.exc.TimeoutError: _database,  # no pooled connection came free in time
    Invalid: lambda r, e: problem(r, 422, str(e)),
    InputError: _input,
    Undecodable: lambda r, e: problem(r, 400, str(e)),  # a binary predict body that does not decode
    Unfit: lambda r, e: problem(r, 422, str(e)),  # one that decodes but does not fit the classifier
    TooMuchToDecode: lambda r, e: problem(r, 413, str(e)),  # images over the request's pixel budget
    ValidationException: _validation,
    pydantic.ValidationError: _pydantic,
    HTTPException: _http,
    Exception: _internal,
}
