"""Structured request logs and request counts at the HTTP edge (request ids; never keys, bodies or sample data)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.application.metrics import Metrics

access_log = logging.getLogger("engram.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestLogMiddleware:
    """Gives every request an id (X-Request-ID, taken from the client when well formed) and logs one JSON
    line per request: method, path, status, duration, id. Headers and bodies are never logged."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        start = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests.labels(scope.get("method", "?"), str(status["code"])).inc()
            access_log.info(json.dumps({"event": "request", "request_id": request_id, "method": scope.get("method"),
                                        "path": scope.get("path"), "status": status["code"],
                                        "ms": round((time.perf_counter() - start) * 1000, 2)}))  # fmt: skip
