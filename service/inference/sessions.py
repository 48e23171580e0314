"""Serving: ONNX Runtime sessions per version, and the in-memory pointer to each active version.

The predict path needs only onnxruntime and numpy. A version's session is built and warmed before the
pointer moves to it, so a swap is instant; a request that already holds the old session finishes on it.
Each served version has its own micro-batcher (``service.inference.batching``): concurrent requests share one run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.inference.batching import MicroBatcher
from service.inference.binary import BinaryBatch, ImageFiles, NpyBatch
from service.inference.inputs import InputFormat, parse_items, softmax
from service.inference.session_cache import SessionCache
from service.settings import Settings

log = logging.getLogger("engram.serving")


@dataclass(frozen=True)
class ServingOptions:
    """How sessions run and batch (the defaults and their reasons live in Settings)."""

    threads: int  # ONNX Runtime intra-op threads; 0 = one per CPU this process may use
    max_batch: int  # rows per model run
    max_wait: float  # seconds a batch waits for more requests before it runs
    max_image_pixels: int  # decoded images larger than this are refused

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingOptions:
        return cls(settings.ort_threads, settings.batch_max_size, settings.batch_max_wait_ms / 1000,
                   settings.max_image_pixels)  # fmt: skip

    def intra_op_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


@dataclass(frozen=True, eq=False)
class Served:
    classifier: str
    version: int
    session: ort.InferenceSession
    labels: list[str]
    tasks: dict[str, list[int]]  # task name -> output units
    fmt: InputFormat
    scenario: str
    batcher: MicroBatcher
    novelty: dict[str, Any] | None = None  # the graph's novelty output: kind, threshold, known_rate

    @property
    def novelty_threshold(self) -> float | None:
        return None if self.novelty is None else float(self.novelty["threshold"])

    def postprocess(self, rows: np.ndarray, top_k: int, task: str | None) -> list[dict[str, Any]]:
        """One request's output rows (logits, then the novelty in a last column when the graph has one) -> its
        predictions (labels, top-k scores, novelty and known)."""
        threshold = self.novelty_threshold
        logits = rows if threshold is None else rows[:, :-1]
        units = np.arange(logits.shape[1])
        if self.scenario == "task-incremental":
            assert task is not None
            units = np.asarray(self.tasks[task])
        probs = softmax(logits[:, units])
        k = min(top_k, len(units))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        novelty = [None] * len(rows) if threshold is None else rows[:, -1].tolist()
        out = []
        for row, idx, nov in zip(probs, order, novelty, strict=True):
            top = [{"label": self.labels[int(units[i])], "score": round(float(row[i]), 6)} for i in idx]
            known = None if nov is None or threshold is None else bool(nov <= threshold)
            out.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top,
                        "novelty": None if nov is None else round(float(nov), 6), "known": known})  # fmt: skip
        return out


def _run_logits(session: ort.InferenceSession, rows: int, outputs: list[str], x: np.ndarray) -> np.ndarray:
    """(N, units) logits (and the novelty as one more column when ``outputs`` has it), in runs of at most
    ``rows`` rows: ONNX Runtime's memory arena keeps the largest run's activations for the session's life, so one
    1,024-photo request would otherwise hold gigabytes in every session it touched (a frozen EfficientNet at
    224 px, 256 rows: about 1 GB a session)."""
    parts = []
    for i in range(0, len(x), rows):
        got = session.run(outputs, {"input": x[i : i + rows]})
        parts.append(got[0] if len(got) == 1 else np.concatenate([got[0], got[1][:, None]], axis=1))
    out: np.ndarray = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    return out


def array_bytes(row: np.ndarray) -> bytes:
    """One input row as .npy bytes (what capture keeps)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(row), allow_pickle=False)
    return buf.getvalue()


def parse_inputs(items: list[Any] | BinaryBatch, fmt: InputFormat, max_pixels: int) -> np.ndarray:
    if isinstance(items, NpyBatch | ImageFiles):  # POST .../predict/binary (service.inference.binary)
        return items.rows(fmt, max_pixels)
    return parse_items(items, fmt, "inputs", max_pixels)


def load_served(
    classifier: str, version: int, folder: Path, network: dict[str, Any], options: ServingOptions
) -> Served:
    """Build and warm a session for the bundle in ``folder``."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = options.intra_op_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads would take the CPU the HTTP event loop needs between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["engram.labels"])
    tasks = {t["name"]: list(t["units"]) for t in json.loads(meta["engram.tasks"])}
    novelty = json.loads(meta["engram.novelty"]) if "engram.novelty" in meta else None  # versions before it: none
    outputs = ["logits", "novelty"] if novelty is not None else ["logits"]
    fmt = InputFormat.from_network(network)
    for n in sorted({1, options.max_batch}):  # warm up the shapes the batcher will use most
        session.run(outputs, {"input": np.zeros((n, *fmt.shape), dtype=np.float32)})
    run = partial(_run_logits, session, options.max_batch, outputs)
    batcher = MicroBatcher(run, options.max_batch, options.max_wait)  # rows come decoded (service.inference.decoding)
    return Served(classifier, version, session, labels, tasks, fmt, network["scenario"], batcher, novelty)


class ServingState:
    """Active versions by classifier, plus a cache of other (pinned or candidate) versions bounded in bytes."""

    # Each version a process keeps costs its ONNX Runtime session's memory: about 0.8 GB for a photo classifier on
    # a frozen EfficientNet at 224 px, arena warmed at the batch size (benchmarks.gate_truth's API process held 6 GB
    # after 7 such versions). Active versions are always kept; others stay within ``cache_bytes`` (the size of
    # each is estimated when it is built: service.inference.session_cache), the least recently used going first.
    def __init__(self, cache_bytes: int = 4 * 2**30) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Served] = {}
        self._cache: SessionCache[tuple[str, int], Served] = SessionCache(cache_bytes)

    def active(self, classifier: str) -> Served | None:
        return self._active.get(classifier)

    def active_versions(self) -> dict[str, int]:
        return {k: v.version for k, v in self._active.items()}

    def swap(self, served: Served) -> None:
        """Make an already built session the active one for its classifier."""
        with self._lock:
            self._active[served.classifier] = served
            self._cache.put((served.classifier, served.version), served)
        log.info("serving %s version %d", served.classifier, served.version)

    def cached(self, classifier: str, version: int) -> Served | None:
        return self._cache.get((classifier, version))

    def remember(self, served: Served, nbytes: int | None = None) -> None:
        """Keep a built version; ``nbytes``: what its session holds (estimated by whoever built it)."""
        self._cache.put((served.classifier, served.version), served, nbytes)
