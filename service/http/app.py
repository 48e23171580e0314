"""create_app(settings) -> Litestar. Settings are passed in, never read from a global."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
from litestar import Litestar, Request, Response, get
from litestar.datastructures import FormMultiDict, State
from litestar.exceptions import ClientException, HTTPException, SerializationException
from litestar.middleware import DefineMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.plugins.pydantic import PydanticInitPlugin
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.template.config import TemplateConfig
from prometheus_client import generate_latest

from service.application.metrics import Metrics
from service.application.services import EngramService
from service.http.auth import KeyRing, audit_secret
from service.http.body import BodyNotJSON, check_utf8, describe_syntax_error
from service.http.limits import body_bound, form_part_limit
from service.http.middleware import RequestLogMiddleware
from service.http.openapi import WireSchemaPlugin, openapi_config
from service.http.problems import EXCEPTION_HANDLERS
from service.http.routes import ROUTES, answer_options
from service.http.ui import STATIC, TEMPLATES, UI
from service.inference.sessions import ServingState
from service.persistence.models import make_engine, make_sessionmaker
from service.persistence.notify import CHANNEL, JOBS_CHANNEL, JobWatch, Listener, Wakeup
from service.settings import Settings
from service.storage import open_store

log = logging.getLogger("engram.app")
STORE_SIZES_EVERY_S = 60.0  # how often the store's bytes per classifier are read for /metrics (bundles are cached)


class EngramRequest(Request[Any, Any, Any]):
    """A request whose JSON body fails to decode with the service's own message, whatever is wrong with it.

    Litestar passes msgspec's message through, which changes between msgspec releases; it also lets a
    RecursionError (nesting past msgspec's limit) and a UnicodeDecodeError reach the catch-all as 500s.
    """

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The body's chunks, refused (413) as soon as they pass this request's own cap (service.http.limits)."""
        bound = body_bound(self.scope.get("state"))
        if bound is None:
            async for chunk in super().stream():
                yield chunk
            return
        limit, what = bound
        too_large = HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                  detail=f"the request body is over {limit:,} bytes, the most a {what} needs")  # fmt: skip
        if (self.content_length or 0) > limit:
            raise too_large
        total = 0
        async for chunk in super().stream():
            total += len(chunk)
            if total > limit:
                raise too_large
            yield chunk

    async def form(self) -> FormMultiDict:
        """Litestar's form, with the service's answers where it would fail: a text part that does not decode in its
        charset (a 500 there) and too many parts (a 400 worded as a 413)."""
        try:
            return await super().form()
        except (UnicodeDecodeError, LookupError):
            raise ClientException("a text field of the multipart form is not valid text in its declared charset; "
                                  "send UTF-8") from None  # fmt: skip
        except ClientException as exc:
            if exc.status_code == 400 and exc.detail == "Request Entity Too Large":  # Litestar's part limit
                raise HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail="the multipart form has "
                                    f"more than {self.app.multipart_form_part_limit:,} parts") from None  # fmt: skip
            raise

    async def json(self) -> Any:
        try:
            check_utf8(await self.body())
            return await super().json()
        except BodyNotJSON as exc:
            raise SerializationException(str(exc)) from None
        except RecursionError:
            raise SerializationException("the request body is not valid JSON: it is nested too deeply") from None
        except (SerializationException, UnicodeDecodeError) as exc:
            cause = exc.__cause__ if isinstance(exc, SerializationException) else exc
            raise SerializationException(describe_syntax_error(await self.body(), str(cause))) from None


async def _background(app: Litestar) -> None:
    """Follow active versions moved by workers or other replicas, and fail jobs whose worker died."""
    service: EngramService = app.state.service
    settings: Settings = app.state.settings
    ticks = 0
    while True:
        try:
            await anyio.to_thread.run_sync(service.serving.sync)
            if ticks % max(1, round(2.0 / settings.serving_poll_seconds)) == 0:
                await anyio.to_thread.run_sync(service.learning.reap)
                await anyio.to_thread.run_sync(service.learning.observe_finished_jobs)
            if ticks % max(1, round(STORE_SIZES_EVERY_S / settings.serving_poll_seconds)) == 0:
                await anyio.to_thread.run_sync(service.lifecycle.refresh_usage)  # engram_store_bytes
        except Exception:
            log.exception("background sync failed; retrying")
        ticks += 1
        await app.state.wakeup.wait(settings.serving_poll_seconds)  # or sooner: NOTIFY (service.persistence.notify)


def create_app(settings: Settings) -> Litestar:
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    serving = ServingState(settings.serving_cache_mb << 20)
    service = EngramService(settings, sessions, open_store(settings.artifacts_path, settings.artifacts_url), serving, Metrics())
    metrics = service.metrics

    @get("/metrics", sync_to_thread=False, include_in_schema=False)
    def metrics_endpoint() -> Response[bytes]:
        for name, version in serving.active_versions().items():
            metrics.active_version.labels(name).set(version)
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.wakeup = wakeup = Wakeup()
        app.state.job_watch = jobs = JobWatch()
        app.state.listener = listener = Listener(settings.db_url, {CHANNEL: wakeup.notify, JOBS_CHANNEL: jobs.notify})
        listener.start()  # PostgreSQL only
        task = asyncio.create_task(_background(app))
        try:
            yield
        finally:
            listener.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            engine.dispose()

    state: dict[str, Any] = {"settings": settings, "service": service, "serving": serving,
                             "keyring": KeyRing(settings.keys(), settings.insecure, audit_secret(settings))}  # fmt: skip
    return Litestar(
        route_handlers=[*ROUTES, metrics_endpoint, UI, STATIC],  # type: ignore[list-item]
        state=State(state),
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=answer_options,
        request_class=EngramRequest,
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        multipart_form_part_limit=form_part_limit(settings),
        openapi_config=openapi_config(),
        # Strict: request bodies are validated exactly as the published schema says (no "5" for 5).
        plugins=[WireSchemaPlugin(), PydanticInitPlugin(validate_strict=True)],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        middleware=[DefineMiddleware(RequestLogMiddleware, metrics=metrics)],
    )
