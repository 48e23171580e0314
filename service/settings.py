"""Service settings from the environment (ENGRAM_*) or arguments; built once and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_core.quantize import LAYER_ROLES as INT8_PARTS
from model_core.quantize import QuantConfig

ROLES = ("predict", "learn", "admin")  # each includes the ones before it


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENGRAM_", extra="ignore")

    data_dir: Path = Path("./engram-data")  # SQLite file and artifacts live here by default
    database_url: str | None = None  # default: sqlite:///<data_dir>/engram.db
    artifacts_dir: Path | None = None  # default: <data_dir>/artifacts
    # s3://bucket/prefix: artifacts on an S3-API object store; artifacts_dir is then this host's cache
    artifacts_url: str | None = None
    # "role:key,role:key"; roles predict < learn < admin. Never logged.
    api_keys: str = Field(default="", repr=False)
    insecure: bool = False  # allow starting with no keys (every request then acts as admin)
    max_body_bytes: int = 64 * 2**20  # larger request bodies get 413
    max_image_pixels: int = 16_000_000  # decoded images larger than this are refused (image bombs)
    # All of one predict request's images together (read from their headers before any is decoded): bounds the CPU
    # one request costs (256 MP of PNG: 3.3-4 s of one core on a shared 2-core host; python -m benchmarks.decode_isolation)
    max_request_pixels: int = Field(default=256_000_000, ge=1)
    # Predict requests over this many pixels decode in a pool of decode_threads threads (0: half the usable CPUs,
    # at least one); lighter ones decode at once, so a small request never waits behind a heavy one
    decode_light_pixels: int = Field(default=1_000_000, ge=0)
    decode_threads: int = Field(default=0, ge=0)  # threads of the decode pool for heavy requests (0: half the usable CPUs)
    # Keys the audit's key fingerprints (HMAC-SHA256). Unset: a random secret is made once and kept in
    # <data_dir>/audit-secret (replicas that share a database should share this value). Never logged.
    audit_secret: str = Field(default="", repr=False)
    max_batch_items: int = 20_000  # samples per learn request
    max_predict_items: int = 1_024  # inputs per predict request
    # ONNX Runtime threads per model run, serving and a worker's frozen-backbone features; 0 = one per usable CPU
    ort_threads: int = Field(default=0, ge=0)
    # Intra-op threads spin while a run lasts and stop when it returns (off: they sleep between operators, which
    # costs a lone request latency but yields the CPU at once on a host oversubscribed by other work);
    # docs/guides/shared-backbone.md, python -m benchmarks.ort_options
    ort_spin: bool = True
    batch_max_size: int = Field(default=64, ge=1)  # rows per batched model run (a bigger request runs alone)
    batch_max_wait_ms: float = Field(default=0.0, ge=0)  # wait for more requests before a batch runs
    embedded_worker: bool = True  # `engram serve` starts one local worker process
    worker_poll_seconds: float = 0.5  # how often a worker on SQLite looks for a queued job (PostgreSQL: procrastinate)
    heartbeat_seconds: float = 2.0  # how often a worker marks its running job alive
    stale_after_seconds: float = 30.0  # a running job without heartbeat this long is failed
    serving_poll_seconds: float = 0.5  # how often replicas look for a new active version
    device: str = "auto"  # training device for workers: auto, cpu, cuda
    # Export each version's novelty score with it where its strategy keeps class models (service.domain.unknowns);
    # off: versions serve no novelty (python -m benchmarks.serve_bench measures what it costs)
    novelty: bool = True
    # A frozen backbone's graph stored once in the artifact store, each version holding only its head
    # (docs/guides/shared-backbone.md); off: every version's model.onnx holds the whole graph, as before
    shared_backbone: bool = True
    # Each task's evaluation samples (images as their 8-bit pixels) and a strategy's large state tensors stored once
    # as content that versions reference (docs/architecture/storage.md); off: in every version's folder, as before
    shared_content: bool = True
    # An int8 (static QDQ) version of a shared frozen photo backbone, quantized at a classifier's first job and
    # learned from, served where a version's check finds it within the tolerance (docs/guides/int8-backbone.md);
    # off: workers learn from fp32 and the API serves every version's fp32 backbone
    int8_backbone: bool = False
    # The tolerance int8 serves within (model_core.quantize.check_int8, on each version's evaluation samples): its
    # accuracy at most this far below fp32's (widened to one sample on small sets), and top-1 disagreement at most
    int8_max_accuracy_drop: float = Field(default=0.005, ge=0, le=1)
    int8_max_disagreement: float = Field(default=0.05, ge=0, le=1)  # the fraction of samples int8 and fp32 may disagree on
    # Parts of the backbone left in float in its int8 graph, comma-separated, among stem, head, depthwise and residual
    # (model_core.quantize.layer_roles); empty: every part int8. The default, model_core.quantize.QuantConfig's, "stem",
    # brings cifar10-mini's final accuracy through the service within 0.002 of fp32's (all-int8: 0.007 under);
    # "stem,depthwise" halves the features' error again (0.141 -> 0.090) but runs at 1.29-1.43x fp32's rows/s at batch
    # 32, against 1.69x (stem) and 2.2x (none) (docs/guides/int8-backbone.md)
    int8_float_parts: str = ",".join(QuantConfig().float_nodes)
    # How int8 graphs run (model_core.quantize.kernels_for): "auto" reads the processor (x86 without VNNI or AMX has
    # saturating int8 kernels: jobs then run the graph's Q/DQ pairs in float and the API serves fp32); "native"
    # trusts the kernels; "simulate" runs Q/DQ pairs in float everywhere, serving too (exact, slower than fp32)
    int8_kernels: Literal["auto", "native", "simulate"] = "auto"
    # Whose photos an int8 graph is calibrated on: "deployment", the first photo job's on a backbone, and every later
    # classifier on that backbone takes the same graph (one int8 session per backbone in serving, as fp32; each
    # version still checked on its own evaluation samples); "classifier", each classifier's first job's (one graph
    # and one serving session per classifier: for classifiers whose photos differ much, e.g. scans beside street scenes)
    int8_calibration: Literal["deployment", "classifier"] = "deployment"
    # Bytes of ONNX Runtime sessions this process keeps for versions that are not active (pinned predictions,
    # quick rollbacks), the least recently used going first; active versions and shared backbones never count
    serving_cache_mb: int = Field(default=512, ge=0)
    # Regression-suite samples a job's gate scores before it scores a seeded sample of them that keeps every class
    # (service.jobs.suite.scored_rows): past it, a job costs this x classes rather than classes^2; 0: always all
    gate_suite_samples: int = Field(default=20_000, ge=0)
    # The most optimiser steps a job may take when its request leaves ``iterations`` to the data
    max_train_steps: int = Field(default=5000, ge=1)
    queue: str = "gpu"  # procrastinate queue the training jobs go to (PostgreSQL deployments)
    # Pretrained backbone weights: where framework downloads are cached (default <data_dir>/weights; the
    # Dockerfile's BAKE_WEIGHTS build argument fills /opt/engram/weights), and whether this host may
    # download at all. Off by default: a "download" source must then already be in the cache.
    weights_cache_dir: Path | None = None
    # Where a worker keeps the graphs it exports from frozen backbones and quantizes from them, by the digest of
    # what they were made from (default <data_dir>/cache): processes on one host may share one, so each backbone
    # is exported once per host rather than once per data folder; deleting it costs one export, never a version
    graph_cache_dir: Path | None = None
    allow_downloads: bool = False  # whether this host may download pretrained weights; off: cached or packaged only
    # The only place a backbone's weights "file" may be (a path relative to it; default: the weights cache dir)
    weights_dir: Path | None = None
    # The retention default of classifiers without a policy of their own (docs/operations/lifecycle.md): a prune keeps
    # the active version's nearest ancestors, this many
    retention_keep_ancestors: int = Field(default=3, ge=0)
    # and every version active, or created, within this many days (service.domain.retention)
    retention_keep_days: float = Field(default=30.0, ge=0)

    @field_validator("int8_float_parts")
    @classmethod
    def _check_float_parts(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        unknown = sorted(set(parts) - set(INT8_PARTS))
        if unknown:
            raise ValueError(f"unknown backbone parts {unknown}; choose among {', '.join(INT8_PARTS)}")
        return ",".join(dict.fromkeys(parts))

    @property
    def int8_float_nodes(self) -> tuple[str, ...]:
        """``int8_float_parts`` as ``model_core.quantize.QuantConfig.float_nodes`` takes them."""
        return tuple(p for p in self.int8_float_parts.split(",") if p)

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'engram.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def run_dir(self) -> Path:
        """Sockets the API rings to wake local polling workers (service.persistence.notify.JobBell)."""
        return (self.data_dir / "run").resolve()

    @property
    def weights_cache_path(self) -> Path:
        return (self.weights_cache_dir or self.data_dir / "weights").resolve()

    @property
    def graph_cache_path(self) -> Path:
        return (self.graph_cache_dir or self.data_dir / "cache").resolve()

    @property
    def weights_files_path(self) -> Path:
        return (self.weights_dir or self.weights_cache_path).resolve()

    def keys(self) -> dict[str, str]:
        """key -> role."""
        return parse_api_keys(self.api_keys)


def parse_api_keys(value: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in value.split(",") if p.strip()):
        role, sep, key = part.partition(":")
        if not sep or role not in ROLES or not key:
            raise ValueError(f"ENGRAM_API_KEYS entry {i + 1} must be role:key with role one of {', '.join(ROLES)}")
        keys[key] = role
    return keys
