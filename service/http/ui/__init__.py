"""The dashboard at /ui: server-rendered pages over the same application service as the API.

Pages are read-only and open, like /docs; promote and rollback ask for an admin key and a reason in the
form, checked exactly as the API checks a bearer key, and are audited the same way; deleting a classifier asks for
an admin key and its name typed again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request, Router, get, post
from litestar.datastructures import ResponseHeader
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from service.http.auth import AuthError, KeyRing
from service.http.deps import VersionNumber, svc

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


def _back(name: str, **params: str | int | None) -> Redirect:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v is not None)
    return Redirect(f"/ui/classifiers/{quote(name)}" + (f"?{query}" if query else ""), status_code=303)


@get("/", sync_to_thread=True)
def index(request: Request[Any, Any, Any], message: str | None = None) -> Template:
    service = svc(request)
    return Template("index.html", context={"classifiers": service.classifiers.list_classifiers(),
                                           "usage": service.lifecycle.usage(), "message": message})  # fmt: skip


@get("/classifiers/{name:str}", sync_to_thread=True)
def classifier_page(
    request: Request[Any, Any, Any],
    name: str,
    version: int | None = None,
    message: str | None = None,
    error: str | None = None,
) -> Template:
    service = svc(request)
    clf = service.classifiers.get_classifier(name)
    versions = service.versions.list_versions(name)
    wanted = (
        version if version is not None else clf["active_version"] or (versions[-1]["version"] if versions else None)
    )
    selected = next((v for v in versions if v["version"] == wanted), None)
    context = {
        "clf": clf, "versions": versions, "selected": selected, "jobs": service.learning.recent_jobs(name),
        "matrix": service.versions.lineage_matrix(name, selected["version"]) if selected else None,
        "message": message, "error": error, "series": service.serving.unknown_rate.series(name),
        "usage": service.lifecycle.usage().get(name), "retention": service.lifecycle.retention(name),
    }  # fmt: skip
    return Template("classifier.html", context=context)


@get("/classifiers/{name:str}/unknown-rate", sync_to_thread=False)
def unknown_rate_fragment(request: Request[Any, Any, Any], name: str) -> Template:
    return Template("unknown_rate.html", context={"series": svc(request).serving.unknown_rate.series(name)})


@get("/classifiers/{name:str}/jobs", sync_to_thread=True)
def jobs_fragment(request: Request[Any, Any, Any], name: str) -> Template:
    return Template("jobs.html", context={"jobs": svc(request).learning.recent_jobs(name)})


def _actor(request: Request[Any, Any, Any], key: str) -> str:
    keys: KeyRing = request.app.state.keyring
    return keys.authorise(f"Bearer {key}", "admin")


def _to_version(raw: str | None) -> int | None:
    """The form's version number, in the API's bounds (1 to 2**31 - 1); ValueError otherwise."""
    if not raw or not raw.strip():
        return None
    text = raw.strip()
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= 2**31 - 1:
        raise ValueError(f"to_version must be a version number from 1 to {2**31 - 1}")
    return int(text)


def _reason(data: dict[str, str]) -> str:
    """The form's reason, required here (a person at the dashboard says why); trimmed and bounded by the service."""
    reason = (data.get("reason") or "").strip()
    if not reason:
        raise ValueError("give a reason")
    return reason


@post("/classifiers/{name:str}/rollback", sync_to_thread=True)
def rollback_form(request: Request[Any, Any, Any], name: str, data: Form) -> Redirect:
    try:
        actor = _actor(request, data.get("key", ""))
        to = _to_version(data.get("to_version"))
        v = svc(request).versions.rollback(name, to, actor, _reason(data))
    except (AuthError, LookupError, RuntimeError, ValueError) as exc:
        return _back(name, error=f"rollback refused: {getattr(exc, 'detail', exc)}")
    return _back(name, message=f"rolled back: v{v['version']} is active")


@post("/classifiers/{name:str}/versions/{number:int}/promote", sync_to_thread=True)
def promote_form(request: Request[Any, Any, Any], name: str, number: VersionNumber, data: Form) -> Redirect:
    try:
        actor = _actor(request, data.get("key", ""))
        v = svc(request).versions.promote(name, number, actor, data.get("force") == "true", _reason(data))
    except (AuthError, LookupError, RuntimeError, ValueError) as exc:
        return _back(name, version=number, error=f"promotion refused: {getattr(exc, 'detail', exc)}")
    return _back(name, message=f"v{v['version']} is active")


@post("/classifiers/{name:str}/delete", sync_to_thread=True)
def delete_form(request: Request[Any, Any, Any], name: str, data: Form) -> Redirect:
    """Delete the classifier: an admin key, and its name typed again as the confirmation."""
    try:
        actor = _actor(request, data.get("key", ""))
        if (data.get("confirm") or "").strip() != name:
            raise ValueError(f"type the classifier's name, {name}, to confirm")
        result = svc(request).lifecycle.delete(name, actor)
    except (AuthError, LookupError, RuntimeError, ValueError) as exc:
        return _back(name, error=f"deletion refused: {getattr(exc, 'detail', exc)}")
    done = f"deleted {name} ({result['versions']} versions, {result['bytes_freed']:,} bytes freed)"
    return Redirect(f"/ui?message={quote(done)}", status_code=303)


# The dashboard's pages load only its own script (htmx) and styles (inline ones among them), and may not be framed:
# its admin forms cannot be overlaid by another site (clickjacking).
SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value="default-src 'self'; script-src 'self'; style-src 'self' "
                   "'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                   "frame-ancestors 'none'"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
]  # fmt: skip
UI = Router(
    path="/ui",
    route_handlers=[index, classifier_page, jobs_fragment, unknown_rate_fragment, rollback_form, promote_form,
                    delete_form],
    include_in_schema=False,
    response_headers=SECURITY_HEADERS,
)
STATIC = create_static_files_router(path="/ui/static", directories=[HERE / "static"], include_in_schema=False)
