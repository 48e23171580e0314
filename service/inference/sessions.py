"""Serving: ONNX Runtime sessions per version, and the in-memory pointer to each active version.

The predict path needs only onnxruntime and numpy. A version's session is built and warmed before the
pointer moves to it, so a swap is instant; a request that already holds the old session finishes on it.

Two kinds of version:

- a whole graph (``model.onnx``: every version before shared backbones, and networks whose backbone trains):
  its own session and its own micro-batcher (``service.inference.batching``): concurrent requests share one run;
- a head on a shared frozen backbone (``head.onnx``, the manifest referencing the backbone graph by sha256,
  docs/guides/shared-backbone.md): the process holds ONE session per backbone (``BackbonePool``), shared by
  every classifier and version on it, with one micro-batcher; requests for any of them batch together, the
  features are computed once per batch, and each version's head graph (a few MB at most) runs on its rows.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_core.graphs import FEATURES
from model_core.quantize import INT8_KIND, SIMULATE_QDQ, Int8Kernels, backbone_session, kernels_for
from model_core.text import trim_padding
from service.inference.batching import MicroBatcher
from service.inference.inputs import InputFormat, softmax
from service.settings import Settings

log = logging.getLogger("engram.serving")
MANIFEST, MODEL_FILE, HEAD_FILE = "manifest.json", "model.onnx", "head.onnx"  # a bundle's (model_core.checkpoint)


@dataclass(frozen=True)
class ServingOptions:
    """How sessions run and batch (the defaults and their reasons live in Settings)."""

    threads: int  # ONNX Runtime intra-op threads; 0 = one per CPU this process may use
    max_batch: int  # rows per model run
    max_wait: float  # seconds a batch waits for more requests before it runs
    max_image_pixels: int  # decoded images larger than this are refused
    spin: bool = True  # intra-op threads spin while a run lasts, and stop when it returns
    int8: bool = True  # a version's int8 backbone serves where its check allowed it (docs/guides/int8-backbone.md)
    int8_simulate: bool = False  # int8 backbones run their Q/DQ pairs in float (Settings.int8_kernels "simulate")

    @classmethod
    def from_settings(cls, settings: Settings, kernels: Int8Kernels | None = None) -> ServingOptions:
        """``kernels``: this processor's int8 kernels, as ``Settings.int8_kernels`` "auto" reads them (read here when
        None; ``model_core.quantize.kernels_for``). Where they saturate (x86 without VNNI or AMX) every version serves its
        fp32 backbone, int8 on or not: there int8 is slower than fp32 and its answers are not the ones its check
        measured; with ``int8_kernels`` "simulate" int8 serves with its Q/DQ pairs run in float."""
        int8, simulate = settings.int8_backbone, False
        if int8:
            kernels = kernels_for(settings.int8_kernels, kernels)
            simulate = kernels.serve_simulated
            if not kernels.exact and not simulate:
                log.warning("ENGRAM_INT8_BACKBONE is on, but this process serves fp32 backbones: %s", kernels.reason)
                int8 = False
        return cls(settings.ort_threads, settings.batch_max_size, settings.batch_max_wait_ms / 1000,
                   settings.max_image_pixels, settings.ort_spin, int8, simulate)  # fmt: skip

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
    batcher: MicroBatcher | HeadOnBackbone
    novelty: dict[str, Any] | None = None  # the graph's novelty output: kind, threshold, known_rate
    nbytes: int = 0  # what keeping this version costs the process, beyond any shared backbone (ServingState)
    backbone: str | None = None  # the sha256 of the shared backbone graph it reads features from

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


def session_options(options: ServingOptions, head: bool = False, simulate_qdq: bool = False) -> ort.SessionOptions:
    """The options every serving session gets. ``head``: a version's head graph on a shared backbone (a few small
    tensors per run, a few matrix products), which gets neither ONNX Runtime's memory arena (it keeps the largest
    run's activations for the session's life: worth it for a backbone, whose activations are reused every run, not
    an arena per version), nor pre-packed weights (a packed copy of every constant matrix beside the original:
    twice the head's weights, 26 MB instead of 13 for an ``analytic`` photo head's novelty whitenings, for a
    gemv that packing hardly speeds up), nor a thread pool of its own (one thread: a head's run is well under a
    millisecond, less than waking a pool's threads; and a pool per version would be threads by the hundred)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1 if head else options.intra_op_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Worker threads spin while a run lasts (a photo backbone is ~100 small parallel ops: waking sleeping
    # threads for each cost about a millisecond a run at one request at a time, where ONNX Runtime's spinning
    # defaults won), and stop spinning as soon as the run returns, so that between batches they leave the CPU
    # to the HTTP event loop (python -m benchmarks.ort_options, docs/guides/shared-backbone.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if simulate_qdq:  # an int8 graph's Q/DQ pairs in float (Settings.int8_kernels "simulate")
        opts.add_session_config_entry(SIMULATE_QDQ, "1")
    if head:
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return opts


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def read_references(folder: Path) -> dict[str, dict[str, Any]]:
    """The content a bundle references by sha256 (``model_core.checkpoint.Manifest.references``, read without
    torch); empty for a bundle that has none (every bundle before shared backbones)."""
    path = folder / MANIFEST
    if not path.exists():
        return {}
    refs = json.loads(path.read_text()).get("references") or {}
    return {str(k): dict(v) for k, v in refs.items()}


def served_backbone(refs: dict[str, dict[str, Any]], options: ServingOptions) -> dict[str, Any]:
    """The backbone reference a version's head runs on: its int8 graph where the job's check let it serve
    (``serve``, service.jobs.int8) and this process allows int8, else its fp32 graph."""
    int8 = refs.get("int8")
    return int8 if options.int8 and int8 and int8.get("serve") else refs["backbone"]


@dataclass(frozen=True, eq=False)
class HeadGraph:
    """A version's head: (B, feature_dim) features -> its output rows (logits, then the novelty column)."""

    session: ort.InferenceSession
    outputs: list[str]
    rows: int  # at most this many rows per run

    def __call__(self, features: np.ndarray) -> np.ndarray:
        parts = []
        for i in range(0, len(features), self.rows):
            got = self.session.run(self.outputs, {FEATURES: features[i : i + self.rows]})
            parts.append(got[0] if len(got) == 1 else np.concatenate([got[0], got[1][:, None]], axis=1))
        out: np.ndarray = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
        return out


@dataclass(frozen=True)
class _HeadRequest:
    head: HeadGraph
    payload: Any

    def __len__(self) -> int:
        return len(self.payload)


def _apply_heads(requests: list[_HeadRequest], features: list[np.ndarray]) -> list[np.ndarray]:
    """Each request's rows through its version's head, every head run once on all its requests' rows."""
    groups: dict[int, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(id(req.head), []).append(i)
    out: list[np.ndarray] = [np.zeros(0)] * len(requests)
    for members in groups.values():
        head = requests[members[0]].head
        rows = head(features[members[0]] if len(members) == 1 else np.concatenate([features[i] for i in members]))
        start = 0
        for i in members:
            out[i] = rows[start : start + len(features[i])]
            start += len(features[i])
    return out


class SharedBackbone:
    """One frozen backbone's session and micro-batcher, shared by every version on it in this process."""

    def __init__(
        self, sha256: str, path: Path, fmt: InputFormat, options: ServingOptions, simulate_qdq: bool = False
    ) -> None:
        self.sha256, self.fmt = sha256, fmt
        before = rss_bytes()
        self.session = backbone_session(path, session_options(options, simulate_qdq=simulate_qdq))
        self.feature_dim = int(self.session.get_outputs()[0].shape[1])
        for n in sorted({1, options.max_batch}):  # warm up the shapes the batcher will use most
            self.session.run([FEATURES], {"input": np.zeros((n, *fmt.shape), dtype=np.float32)})
        self.nbytes = max(path.stat().st_size, rss_bytes() - before)
        # rows come decoded (service.inference.decoding): the batch's thread only runs the models
        self.batcher = MicroBatcher(self._features, options.max_batch, options.max_wait,
                                    lambda r: np.asarray(r.payload, dtype=np.float32), _apply_heads)  # fmt: skip
        self.rows = options.max_batch

    def _features(self, x: np.ndarray) -> np.ndarray:
        """(N, feature_dim) features in runs of at most ``rows`` rows (see ``_run_logits``); token ids cut to the
        batch's longest message (exact: padding is masked inside the encoder)."""
        cut = trim_padding if self.fmt.input.kind == "text" else (lambda a: a)
        parts = [self.session.run([FEATURES], {"input": cut(x[i : i + self.rows])})[0] for i in range(0, len(x), self.rows)]
        out: np.ndarray = np.concatenate(parts)
        return out


class HeadOnBackbone:
    """What a version on a shared backbone submits its requests to: the backbone's batcher, tagged with its head."""

    def __init__(self, backbone: SharedBackbone, head: HeadGraph) -> None:
        self.backbone, self.head = backbone, head

    async def submit(self, payload: Any) -> tuple[np.ndarray, int]:
        return await self.backbone.batcher.submit(_HeadRequest(self.head, payload))


class BackbonePool:
    """The shared backbones of this process, by sha256: each built once (however many versions ask at once) and
    kept while the process lives (a deployment has few backbones; each is the one big session it serves)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._backbones: dict[str, SharedBackbone] = {}

    def get(self, sha256: str, path: Callable[[str], Path], fmt: InputFormat, options: ServingOptions,
            simulate_qdq: bool = False) -> SharedBackbone:  # fmt: skip
        with self._lock:
            found = self._backbones.get(sha256)
            if found is not None:
                return found
            build = self._building.setdefault(sha256, threading.Lock())
        with build:
            found = self._backbones.get(sha256)
            if found is None:
                found = SharedBackbone(sha256, path(sha256), fmt, options, simulate_qdq)
                with self._lock:
                    self._backbones[sha256] = found
                log.info("built the shared backbone %s (%.0f MB)", sha256[:12], found.nbytes / 1e6)
            return found

    def all(self) -> list[SharedBackbone]:
        with self._lock:
            return list(self._backbones.values())


def load_served(
    classifier: str,
    version: int,
    folder: Path,
    network: dict[str, Any],
    options: ServingOptions,
    backbones: BackbonePool | None = None,
    content: Callable[[str], Path] | None = None,
) -> Served:
    """Build and warm a session for the bundle in ``folder``: its whole graph (``model.onnx``), or its head
    (``head.onnx``) on the shared backbone its manifest references, from ``backbones`` (built from ``content``,
    the artifact store's ``content_path``, when this process has none yet)."""
    fmt = InputFormat.from_network(network, content)
    refs = read_references(folder)
    before = rss_bytes()
    if "backbone" in refs and (folder / HEAD_FILE).exists():
        if backbones is None or content is None:
            raise RuntimeError(f"{folder} references a shared backbone; load it with a BackbonePool and a store")
        ref = served_backbone(refs, options)
        simulate = options.int8_simulate and ref.get("kind") == INT8_KIND
        backbone = backbones.get(str(ref["sha256"]), content, fmt, options, simulate)
        before = rss_bytes()  # the head's own cost from here (the backbone's, built or not just now, is not its)
        path = folder / HEAD_FILE
        session = ort.InferenceSession(str(path), session_options(options, head=True),
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        width: tuple[int, ...] = (backbone.feature_dim,)
    else:
        backbone, path = None, folder / MODEL_FILE
        session = ort.InferenceSession(str(path), session_options(options), providers=["CPUExecutionProvider"])
        width = fmt.shape
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["engram.labels"])
    tasks = {t["name"]: list(t["units"]) for t in json.loads(meta["engram.tasks"])}
    novelty = json.loads(meta["engram.novelty"]) if "engram.novelty" in meta else None  # versions before it: none
    outputs = ["logits", "novelty"] if novelty is not None else ["logits"]
    feed = FEATURES if backbone is not None else "input"
    for n in sorted({1, options.max_batch}):  # warm up the shapes the batcher will use most
        session.run(outputs, {feed: np.zeros((n, *width), dtype=np.float32)})
    # What keeping the version costs: what building and warming it grew the process by, never less than its graph
    # file (its weights, which the session holds once: no packed copies for a head). Before, a head's estimate
    # also took the shared backbone's cost off the growth (whether or not the backbone was built just then), so
    # it was always the file's size, a third of what ONNX Runtime kept (the novelty matrices' float64 copies).
    nbytes = max(path.stat().st_size, rss_bytes() - before)
    if backbone is not None:
        runner: MicroBatcher | HeadOnBackbone = HeadOnBackbone(backbone, HeadGraph(session, outputs, options.max_batch))
        return Served(classifier, version, session, labels, tasks, fmt, network["scenario"], runner, novelty,
                      nbytes, backbone.sha256)  # fmt: skip
    run = partial(_run_logits, session, options.max_batch, outputs)
    batcher = MicroBatcher(run, options.max_batch, options.max_wait)  # rows come decoded (service.inference.decoding)
    return Served(classifier, version, session, labels, tasks, fmt, network["scenario"], batcher, novelty, nbytes)


class ServingState:
    """Active versions by classifier, plus a cache of other (pinned or candidate) versions bounded by bytes,
    and the shared backbones every version on one reads its features from."""

    # What a version costs the process: a whole-graph photo version about 0.8 GB (its own backbone and arena,
    # warmed at the batch size), a head on a shared backbone a few MB at most (its graph; the backbone counts
    # once, in ``backbones``). Active versions are always kept; others stay for pinned predictions and quick
    # rollbacks while their ``Served.nbytes`` sum to at most ``cache_bytes``, the least recently used going first
    # (the one just used always stays, however big: a pinned version is not rebuilt for every request).
    def __init__(self, cache_bytes: int = 512 << 20) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Served] = {}
        self._cache: OrderedDict[tuple[str, int], Served] = OrderedDict()
        self.cache_bytes = cache_bytes
        self.backbones = BackbonePool()

    def active(self, classifier: str) -> Served | None:
        return self._active.get(classifier)

    def active_versions(self) -> dict[str, int]:
        return {k: v.version for k, v in self._active.items()}

    def swap(self, served: Served) -> None:
        """Make an already built session the active one for its classifier."""
        with self._lock:
            self._active[served.classifier] = served
            self._remember(served)
        log.info("serving %s version %d", served.classifier, served.version)

    def forget(self, classifier: str, version: int | None = None) -> None:
        """Drop a deleted classifier's sessions (``version`` None), or one pruned version's cached session."""
        with self._lock:
            if version is None:
                self._active.pop(classifier, None)
            for key in [k for k in self._cache if k[0] == classifier and version in (None, k[1])]:
                if self._active.get(classifier) is not self._cache[key]:
                    del self._cache[key]

    def cached(self, classifier: str, version: int) -> Served | None:
        with self._lock:
            served = self._cache.get((classifier, version))
            if served is not None:
                self._cache.move_to_end((classifier, version))
            return served

    def remember(self, served: Served) -> None:
        with self._lock:
            self._remember(served)

    def cached_versions(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._cache)

    def inactive_bytes(self) -> int:
        with self._lock:
            return self._inactive_bytes()

    def _inactive_bytes(self) -> int:
        return sum(s.nbytes for s in self._cache.values() if self._active.get(s.classifier) is not s)

    def _remember(self, served: Served) -> None:
        self._cache[(served.classifier, served.version)] = served
        self._cache.move_to_end((served.classifier, served.version))
        over = self._inactive_bytes() - self.cache_bytes
        for key in list(self._cache)[:-1]:  # least recently used first; active versions and the newest stay
            if over <= 0:
                break
            old = self._cache[key]
            if self._active.get(old.classifier) is old:
                continue
            del self._cache[key]
            over -= old.nbytes
            log.info("evicted %s version %d from the serving cache (%.1f MB)", old.classifier, old.version,
                     old.nbytes / 1e6)  # fmt: skip
