"""Prometheus metrics and structured request logs (request ids; never keys, bodies or sample data)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

access_log = logging.getLogger("engram.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """One registry per app (several apps in one process stay separate)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.predict_seconds = Histogram("engram_predict_seconds", "predict request latency (decode + inference)",
                                         ["classifier", "version"], registry=r,
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))  # fmt: skip
        self.batch_size = Histogram("engram_predict_batch_size", "inputs per predict request", ["classifier"],
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))  # fmt: skip
        self.model_batch_rows = Histogram("engram_model_batch_rows",
                                          "rows in the batched model run that served each predict request",
                                          ["classifier"], registry=r,
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))  # fmt: skip
        self.job_stage_seconds = Histogram("engram_job_stage_seconds", "time per learning-job stage", ["stage"],
                                           registry=r, buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))  # fmt: skip
        self.job_outcomes = Counter("engram_job_outcomes_total", "finished learning jobs by outcome (gate verdict)",
                                    ["classifier", "outcome"], registry=r)  # fmt: skip
        self.active_version = Gauge(
            "engram_active_version", "version served per classifier", ["classifier"], registry=r
        )
        self.session_builds = Counter("engram_session_builds_total",
                                      "ONNX Runtime sessions built (one per version per replica, single flight)",
                                      ["classifier"], registry=r)  # fmt: skip
        self.session_load_failures = Counter("engram_session_load_failures_total",
                                             "failed attempts to load a version's session (retried with backoff)",
                                             ["classifier"], registry=r)  # fmt: skip
        self.unloadable_versions = Gauge("engram_unloadable_active_versions",
                                         "active versions this replica cannot load yet", registry=r)  # fmt: skip
        self.requests = Counter("engram_http_requests_total", "HTTP requests", ["method", "status"], registry=r)

    def observe_job(self, classifier: str, status: str, seconds: dict[str, Any]) -> None:
        self.job_outcomes.labels(classifier, status).inc()
        for stage, value in seconds.items():
            self.job_stage_seconds.labels(stage).observe(float(value))


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
