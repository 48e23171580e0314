"""Prometheus metrics of the application: predictions, jobs, sessions, requests (one registry per app)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.novelty_predictions = Counter("engram_novelty_predictions_total",
                                           "predictions with a novelty score (the unknown rate's denominator)",
                                           ["classifier", "version"], registry=r)  # fmt: skip
        self.unknown_predictions = Counter("engram_unknown_predictions_total",
                                           "predictions whose novelty is above the version's threshold",
                                           ["classifier", "version"], registry=r)  # fmt: skip
        self.captured_inputs = Counter("engram_captured_inputs_total", "inputs flagged unknown and kept (capture)",
                                       ["classifier"], registry=r)  # fmt: skip
        self.store_bytes = Gauge("engram_store_bytes",
                                 "artifact-store bytes per classifier: its kept versions' own files (part=versions) and "
                                 "the content they reference, each once (part=content; shared content counts in each "
                                 "classifier that references it)", ["classifier", "part"], registry=r)  # fmt: skip
        self.requests = Counter("engram_http_requests_total", "HTTP requests", ["method", "status"], registry=r)

    def observe_job(self, classifier: str, status: str, seconds: dict[str, Any]) -> None:
        self.job_outcomes.labels(classifier, status).inc()
        for stage, value in seconds.items():
            self.job_stage_seconds.labels(stage).observe(float(value))
